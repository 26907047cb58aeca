"""The fast paths must give what the plain path gives: same preprocessing, same embeddings, same predictions."""

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.models import MobileNet_V2_Weights

from tl_core.data.pipeline import Batcher, decode_many, decode_square, matched_side, progressive_size
from tl_core.data.scan import load_dataset
from tl_core.features.cache import EmbeddingCache, embed, fuse_for_inference, group_key, headless, inference_copy
from tl_core.models import backbones
from tl_core.models.backbones import Preprocessing


def test_decoding_and_cropping_match_torchvision_transforms(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)).filter(
        __import__("PIL.ImageFilter", fromlist=["x"]).GaussianBlur(3)).save(path, quality=95)
    weights = MobileNet_V2_Weights.IMAGENET1K_V1
    reference = weights.transforms()(Image.open(path).convert("RGB"))
    ours = Batcher(backbones.preprocessing_of(weights), torch.device("cpu"), "none").eval(
        torch.from_numpy(decode_square(str(path), 256)).permute(2, 0, 1)[None])[0]
    assert ours.shape == reference.shape
    assert (ours - reference).abs().mean() < 0.02


def test_convolutions_apply_their_activation_in_the_same_kernel_with_the_same_result():
    from torch.fx.experimental.optimization import fuse

    from tl_core.features.cache import ConvActivation

    x = torch.randn(4, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    for name, activations in (("mobilenet_v2", 35), ("resnet18", 9)):  # ReLU6 after 35 convs; ReLU after 9 (+ 8 after adds)
        model = getattr(torchvision.models, name)().eval().to(memory_format=torch.channels_last)
        fast = fuse_for_inference(model)
        assert sum(isinstance(m, ConvActivation) for m in fast.modules()) == activations
        with torch.no_grad():
            assert torch.allclose(fast(x), fuse(model)(x), atol=1e-4, rtol=1e-4)
            with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 weights under autocast still run in bf16
                assert torch.equal(fast(x), fuse(model)(x))
        half = inference_copy(model, torch.bfloat16)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(half(x), fuse(model).to(torch.bfloat16)(x))  # bf16: the very same numbers


def test_resizing_with_torch_gives_pillows_pixels():
    """`pipeline.square` resizes with torch's uint8 antialiased kernel: within two grey levels of Pillow's bilinear."""
    from tl_core.data.pipeline import square

    rng = np.random.default_rng(1)
    for w, h, size in ((500, 375, 256), (375, 500, 224), (40, 30, 64), (256, 300, 256)):  # down, up and exact sizes
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).filter(
            __import__("PIL.ImageFilter", fromlist=["x"]).GaussianBlur(2))
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        left, top = round((nw - size) / 2), round((nh - size) / 2)
        pillow = np.asarray(img.resize((nw, nh), Image.BILINEAR).crop((left, top, left + size, top + size)), dtype=int)
        ours = square(img, size)
        assert ours.shape == (size, size, 3) and ours.dtype == np.uint8
        assert np.abs(ours.astype(int) - pillow).max() <= 2 and np.abs(ours.astype(int) - pillow).mean() < 0.05


def test_decoding_threads_run_torch_on_one_thread_and_leave_the_rest_alone():
    from concurrent.futures import ThreadPoolExecutor

    from tl_core.devices import single_threaded_torch

    if "OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("this torch has no OpenMP runtime: nothing to set")
    before = torch.get_num_threads()
    with ThreadPoolExecutor(1, initializer=single_threaded_torch) as pool:
        assert pool.submit(torch.get_num_threads).result() == 1
    assert torch.get_num_threads() == before


def test_batch_augmentation_is_seeded_and_keeps_shape():
    u8 = torch.randint(0, 255, (4, 3, 73, 73), dtype=torch.uint8)
    b = Batcher(Preprocessing.imagenet(64), torch.device("cpu"), "strong")
    a1 = b.train(u8, torch.Generator().manual_seed(1))
    a2 = b.train(u8, torch.Generator().manual_seed(1))
    assert a1.shape == (4, 3, 64, 64) and torch.equal(a1, a2)
    assert not torch.equal(a1, b.train(u8, torch.Generator().manual_seed(2)))


def test_fused_bf16_embeddings_match_plain_float32(with_real_weights):
    model, head, prep = backbones.build("mobilenet_v2", 5)
    ds = load_dataset("demo")
    u8, _, _ = decode_many(ds.split("val")[:32], prep.resize)
    x = Batcher(prep, torch.device("cpu"), "none").eval(u8)
    with headless(model, head):
        plain = embed(model.eval(), x.contiguous(), None)
        fast = embed(fuse_for_inference(model).to(memory_format=torch.channels_last), x, torch.bfloat16)
    cos = torch.nn.functional.cosine_similarity(plain, fast, dim=1)
    assert cos.min() > 0.99
    torch.manual_seed(0)
    layer = torch.nn.Linear(plain.shape[1], 5)
    torch.nn.init.normal_(layer.weight, std=0.05)
    with torch.no_grad():
        agree = (layer(plain).argmax(1) == layer(fast).argmax(1)).float().mean()
    assert agree >= 0.9


def test_embedding_cache_is_keyed_and_bounded(tmp_path):
    key_a = group_key(backbone="m", weights="w1", prep={"crop": 224}, view=0)
    assert key_a == group_key(backbone="m", weights="w1", prep={"crop": 224}, view=0)
    assert key_a != group_key(backbone="m", weights="w2", prep={"crop": 224}, view=0)
    assert key_a != group_key(backbone="m", weights="w1", prep={"crop": 192}, view=0)
    cache = EmbeddingCache(key_a, tmp_path, max_bytes=300_000)
    cache.save(["h1", "h2"], torch.stack([torch.ones(1000), torch.zeros(1000)]))
    cache.save(["h3"], torch.full((1, 1000), 3.0))
    loaded = cache.load()
    assert torch.equal(loaded["h1"], torch.ones(1000)) and torch.equal(loaded["h3"], torch.full((1000,), 3.0))
    for i in range(120):
        EmbeddingCache(f"g{i}", tmp_path, max_bytes=300_000).save(["h"], torch.ones(1, 1000))
    total = sum(f.stat().st_size for f in tmp_path.rglob("*.safetensors"))
    assert total <= 300_000 + 5000


def test_fitted_head_on_cached_embeddings_is_no_worse_than_running_the_backbone(with_real_weights, tmp_path):
    """The head fitted on cached embeddings against a head trained by SGD with the frozen backbone run every step."""
    from tl_core.config import TrainConfig
    from tl_core.train.trainer import train
    from tl_core.use.predict import evaluate

    cfg = dict(backbone="mobilenet_v2", epochs=3, augment="none", seed=3, patience=0, amp=False)
    fast = train("demo", TrainConfig(strategy="features", **cfg), tmp_path / "a")
    slow = train("demo", TrainConfig(strategy="features", embedding_cache=False, **cfg), tmp_path / "b")
    ev_fast, ev_slow = evaluate(fast.run_dir), evaluate(slow.run_dir)
    assert ev_fast.accuracy >= ev_slow.accuracy - 0.02 and ev_fast.accuracy >= 0.9


def test_inference_copy_folds_batchnorm_without_changing_outputs():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    for m in model.modules():  # BatchNorm statistics far from the identity, so folding them is really tested
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        plain = model(x)
        fused = inference_copy(model, None)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        assert torch.allclose(fused(x), plain, atol=1e-4, rtol=1e-3)
        half = inference_copy(model, torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = half(x).float()
    assert next(half.parameters()).dtype == torch.bfloat16 and next(model.parameters()).dtype == torch.float32
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the model itself is left as it was
    assert torch.nn.functional.cosine_similarity(low, plain, dim=1).min() > 0.99


def test_progressive_resizing_grows_to_the_matched_size_and_batches_follow():
    assert [progressive_size(224, e, 5, 0.5) for e in range(1, 6)] == [112, 144, 160, 192, 224]
    imagenet = Preprocessing.imagenet(224)
    # FixRes: light random crops keep 35-100% of the 256-px square, so 208 px shows objects as validation's 224 does
    assert (matched_side(imagenet, "light"), matched_side(imagenet, "strong"), matched_side(imagenet, "none")) == (208, 189, 224)
    assert [progressive_size(224, e, 5, 0.5, 208) for e in range(1, 6)] == [112, 128, 160, 192, 208]
    assert {progressive_size(224, e, 5, 1.0) for e in range(1, 6)} == {224} == {progressive_size(224, 1, 1, 0.5)}
    assert {progressive_size(48, e, 5, 0.5) for e in range(1, 6)} == {48}  # small images are never shrunk further
    assert [progressive_size(128, e, 2, 0.5) for e in (1, 2)] == [112, 128]  # never under 112 px
    u8 = torch.randint(0, 255, (4, 3, 73, 73), dtype=torch.uint8)
    for augment in ("none", "light"):
        b = Batcher(Preprocessing.imagenet(64), torch.device("cpu"), augment)
        small = b.train(u8, torch.Generator().manual_seed(1), 32)
        assert small.shape == (4, 3, 32, 32) and b.train(u8, torch.Generator().manual_seed(1)).shape == (4, 3, 64, 64)
        assert small.mean().abs() < 3  # normalised once, like the full-size batch


def test_progressive_resizing_fine_tunes_above_chance_and_says_so(with_real_weights, tmp_path):
    from tl_core.config import TrainConfig
    from tl_core.train.events import Logged
    from tl_core.train.trainer import train

    events = []
    cfg = TrainConfig(backbone="mobilenet_v2", strategy="full", image_size=128, epochs=3, batch_size=32, patience=0,
                      progressive_resize=0.5)
    result = train("demo", cfg, tmp_path, [events.append])
    assert "Progressive resizing: training images of 112 / 112 / 120 px by epoch (validation at 128 px)." in [
        e.message for e in events if isinstance(e, Logged)]
    assert result.best_val_accuracy >= 0.6  # 5 classes: chance is 0.2
