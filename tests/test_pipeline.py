"""Decoding, resizing, augmenting and batching: the fast paths give what torchvision and Pillow give."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import RED, red_at_left
from PIL import Image
from torchvision.models import MobileNet_V2_Weights

from tl_core.data.pipeline import Batcher, decode_many, decode_square, matched_side, progressive_size, square
from tl_core.data.sources import Sample
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
        torch.from_numpy(decode_square(str(path), backbones.preprocessing_of(weights))).permute(2, 0, 1)[None])[0]
    assert ours.shape == reference.shape
    assert (ours - reference).abs().mean() < 0.02


def test_resizing_with_torch_gives_pillows_pixels():
    """`pipeline.centre_square` resizes with torch's uint8 antialiased kernel: within two grey levels of Pillow's bilinear."""
    from tl_core.data.pipeline import centre_square

    rng = np.random.default_rng(1)
    for w, h, size in ((500, 375, 256), (375, 500, 224), (40, 30, 64), (256, 300, 256)):  # down, up and exact sizes
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).filter(
            __import__("PIL.ImageFilter", fromlist=["x"]).GaussianBlur(2))
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        left, top = round((nw - size) / 2), round((nh - size) / 2)
        pillow = np.asarray(img.resize((nw, nh), Image.BILINEAR).crop((left, top, left + size, top + size)), dtype=int)
        ours = centre_square(img, size)
        assert ours.shape == (size, size, 3) and ours.dtype == np.uint8
        assert np.abs(ours.astype(int) - pillow).max() <= 2 and np.abs(ours.astype(int) - pillow).mean() < 0.05


def test_batch_augmentation_is_seeded_and_keeps_shape():
    u8 = torch.randint(0, 255, (4, 3, 73, 73), dtype=torch.uint8)
    b = Batcher(Preprocessing.imagenet(64), torch.device("cpu"), "strong")
    a1 = b.train(u8, torch.Generator().manual_seed(1))
    a2 = b.train(u8, torch.Generator().manual_seed(1))
    assert a1.shape == (4, 3, 64, 64) and torch.equal(a1, a2)
    assert not torch.equal(a1, b.train(u8, torch.Generator().manual_seed(2)))


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


def red_share(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Per image of a normalised batch: the share of its pixels that are the red of `red_at_left`."""
    rgb = x * torch.tensor(prep.std).view(1, 3, 1, 1) * 255 + torch.tensor(prep.mean).view(1, 3, 1, 1) * 255
    red = (rgb[:, 0] > 180) & (rgb[:, 1] < 70) & (rgb[:, 2] < 70)
    return red.float().mean((1, 2))


def test_letterbox_keeps_the_whole_wide_picture_where_a_centre_crop_loses_its_edge():
    """A 300 x 100 picture with a red square at its far left: the centre crop shows none of it, the letterbox all
    of it (a third of the picture's width, between pads of the mean colour above and below)."""
    crop = Preprocessing.imagenet(64)
    box = crop.letterboxed()
    assert (box.fit, box.resize, box.crop) == ("letterbox", 64, 64)
    img = red_at_left()
    seen = {p.fit: Batcher(p, torch.device("cpu"), "none").eval(torch.from_numpy(square(img, p)).permute(2, 0, 1)[None])
            for p in (crop, box)}
    assert red_share(seen["crop"], crop).item() == 0
    assert red_share(seen["letterbox"], box).item() == pytest.approx(21 * 21 / 64**2, abs=0.01)  # 100 px -> 21 px square
    rows = square(img, box)
    assert (rows[:22] == box.fill).all() and (rows[-21:] == box.fill).all()  # 43 rows of fill: round(21.5) above
    assert rows[32, 0].tolist() == list(RED) and rows[32, 63].tolist() == [128, 128, 128]  # left edge red, right grey


def test_letterbox_batches_augment_the_whole_picture(tmp_path):
    """Fine-tuning's path: files decoded once into the store's squares (`decode_many`), then random crops on the
    device. With letterbox most augmented views still hold the red edge; with centre crops none ever does."""
    path = tmp_path / "wide.png"
    red_at_left().save(path)
    samples = [Sample(str(path), 0, "train")] * 32
    shares = {}
    for prep in (Preprocessing.imagenet(64), Preprocessing.imagenet(64).letterboxed()):
        u8, kept, problems = decode_many(samples, prep)
        assert u8.shape == (32, 3, prep.resize, prep.resize) and not problems
        shares[prep.fit] = red_share(Batcher(prep, torch.device("cpu"), "light").train(u8, torch.Generator().manual_seed(0)), prep)
    assert (shares["crop"] == 0).all()
    assert (shares["letterbox"] > 0).float().mean() > 0.75
