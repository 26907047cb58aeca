"""Embeddings: the fused, channels-last, bf16 inference copies give the plain model's numbers, and the
embedding cache is keyed by everything that changes them and bounded in size."""

from __future__ import annotations

import torch
import torchvision

from tl_core.data.pipeline import Batcher, decode_many
from tl_core.data.scan import load_dataset
from tl_core.features.cache import EmbeddingCache, embed, fuse_for_inference, group_key, headless, inference_copy
from tl_core.features.frozen import embedding_caches
from tl_core.models import backbones


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


def test_fused_bf16_embeddings_match_plain_float32(with_real_weights):
    model, head, prep = backbones.build("mobilenet_v2", 5)
    ds = load_dataset("demo")
    u8, _, _ = decode_many(ds.split("val")[:32], prep)
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
    crop = backbones.Preprocessing.imagenet()
    crop_keys, box_keys = ([c.dir.name for c in embedding_caches("m", "w1", p, None, 2, "light", 0)]
                           for p in (crop, crop.letterboxed()))
    assert not set(crop_keys) & set(box_keys)  # letterboxed pixels give other embeddings, in their own groups
    cache = EmbeddingCache(key_a, tmp_path, max_bytes=300_000)
    cache.save(["h1", "h2"], torch.stack([torch.ones(1000), torch.zeros(1000)]))
    cache.save(["h3"], torch.full((1, 1000), 3.0))
    loaded = cache.load()
    assert torch.equal(loaded["h1"], torch.ones(1000)) and torch.equal(loaded["h3"], torch.full((1000,), 3.0))
    for i in range(120):
        EmbeddingCache(f"g{i}", tmp_path, max_bytes=300_000).save(["h"], torch.ones(1, 1000))
    total = sum(f.stat().st_size for f in tmp_path.rglob("*.safetensors"))
    assert total <= 300_000 + 5000


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
