"""Data health on planted faults: label swaps found by confident learning, near-copies found across splits."""

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import HYMENOPTERA, cli
from PIL import Image, ImageDraw

from tl_core.data.sources import Sample
from tl_core.features.health import health_from_embeddings


@pytest.fixture(scope="module")
def planted(tmp_path_factory, real_weights):
    """A copy of ants vs bees with 10 ants filed as bees, 10 bees as ants, 5 shrunk, re-encoded copies of
    training ants in val (70%, JPEG 70) and 5 more (80%, JPEG 80), a training bee's file in val/ants, and 3 pictures
    of neither (noise, a gradient, a document); `issues --json` run on it once (its embeddings are cached for the
    session)."""
    if not HYMENOPTERA.exists():
        pytest.skip("../shared/data is absent")
    root = tmp_path_factory.mktemp("planted") / "hymenoptera"
    shutil.copytree(HYMENOPTERA, root)
    moved = []
    for src, dst in (("ants", "bees"), ("bees", "ants")):
        for f in sorted((root / "train" / src).glob("*.jpg"))[::12][:10]:
            f.rename(root / "train" / dst / f.name)
            moved.append(str(root / "train" / dst / f.name))
    copies = []
    for i, f in enumerate(sorted((root / "train" / "ants").glob("*.jpg"))[1::25][:5]):
        im = Image.open(f).convert("RGB")
        im.resize((int(im.width * 0.7), int(im.height * 0.7))).save(root / "val" / "ants" / f"copy_{i}.jpg", quality=70)
        copies.append(str(root / "val" / "ants" / f"copy_{i}.jpg"))
    for i, f in enumerate(sorted((root / "train" / "ants").glob("*.jpg"))[3::23][:5]):
        im = Image.open(f).convert("RGB")
        im.resize((int(im.width * 0.8), int(im.height * 0.8))).save(root / "val" / "ants" / f"copy80_{i}.jpg", quality=80)
        copies.append(str(root / "val" / "ants" / f"copy80_{i}.jpg"))
    bee = sorted((root / "train" / "bees").glob("*.jpg"))[5]
    shutil.copyfile(bee, root / "val" / "ants" / "same_file.jpg")
    copies.append((str(bee), str(root / "val" / "ants" / "same_file.jpg")))
    off_domain = plant_off_domain(root)
    out = cli("issues", str(root), "--json", env={"TORCH_HOME": str(real_weights)})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), moved, copies, off_domain


def plant_off_domain(root) -> list[str]:
    rng = np.random.default_rng(0)
    noise, gradient = root / "train" / "bees" / "noise.jpg", root / "train" / "ants" / "gradient.jpg"
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(noise)
    Image.fromarray(np.linspace(0, 255, 400, dtype=np.uint8)[None, :, None].repeat(300, 0).repeat(3, 2)).save(gradient)
    document = root / "val" / "bees" / "document.png"
    im = Image.new("RGB", (400, 300), "white")
    for i in range(12):
        ImageDraw.Draw(im).text((10, 10 + 22 * i), f"Invoice 2026-11, line {i}: total due 1,234.56 EUR", fill="black")
    im.save(document)
    return [str(noise), str(gradient), str(document)]


def test_label_swaps_are_among_the_top_suggestions(planted):
    report, moved, _, _ = planted
    assert len(moved) == 20
    top = {s["path"] for s in report["suspects"][:40]}
    assert len(top & set(moved)) >= 14
    first = report["suspects"][0]
    assert first["suggested"] != first["given"] and first["quality"] < 0.5


def test_near_copies_in_val_are_flagged_as_cross_split_duplicates(planted):
    report, moved, copies, _ = planted
    *shrunk, (bee, same_file) = copies
    leaks = [p for p in report["duplicates"] if p["cross_split"]]
    assert len(shrunk) == 10 and all(any(c in (p["a"], p["b"]) for p in leaks) for c in shrunk)
    assert sum(any(c in (p["a"], p["b"]) for p in leaks) for c in shrunk[5:]) == 5  # 80%, JPEG 80: 5 of 5
    exact = [p for p in report["duplicates"] if {p["a"], p["b"]} == {bee, same_file}]
    assert exact and exact[0]["exact"] and exact[0]["cross_class"] and exact[0]["found_by"] == "identical files"
    assert not any(p["exact"] for p in report["duplicates"] if p is not exact[0])
    assert len(report["duplicates"]) < 25  # distinct photos are not reported as duplicates
    assert report["balance"]["counts"] == {"ants": 123 + 1 + 10 - 10 + 1, "bees": 121 + 1}


def test_pictures_of_neither_class_are_the_top_outliers(planted):
    """Off-domain pictures are found, and so is the placeholder GIF that ships inside the real ants-vs-bees set."""
    report, _, _, off_domain = planted
    top = [o["path"] for o in report["outliers"][:6]]
    assert set(off_domain) <= set(top)
    assert any(p.endswith("imageNotFound.gif") for p in top)
    assert len(report["outliers"]) <= 12  # real photos of ants and bees are not outliers


def test_outliers_balance_and_map_on_synthetic_embeddings():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(2, 32, generator=g) * 3
    labels = [0] * 90 + [1] * 30
    x = centres[labels] + torch.randn(120, 32, generator=g)
    x[5] = torch.randn(32, generator=g) * 40  # far from everything
    samples = [Sample(f"img{i}.png", y, "train" if i % 4 else "val") for i, y in enumerate(labels)]
    report = health_from_embeddings(x, samples, ["big", "small"])
    assert report.outliers and report.outliers[0].path == "img5.png"
    assert report.balance.counts == {"big": 67, "small": 23} and report.balance.ratio == pytest.approx(67 / 23)
    assert "3.0x" in report.balance.note or "2.9x" in report.balance.note
    assert len(report.points) == 120 and report.projection == "t-SNE"


def smooth_picture(seed: int) -> Image.Image:
    """Photo-like: smooth shapes of colour (upscaled noise) with fine grain on top."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize((400, 300), Image.Resampling.BICUBIC)
    grain = rng.normal(0, 8, (300, 400, 3))
    return Image.fromarray(np.clip(np.asarray(base, dtype=float) + grain, 0, 255).astype(np.uint8))



def test_perceptual_hash_finds_every_shrunk_copy_and_names_identical_files(tmp_path):
    from tl_core.features.health import HASH_BITS, hash_duplicates, perceptual_hash

    samples, copies = [], []
    for i in range(8):
        original = tmp_path / "train" / "ab"[i % 2] / f"{i}.png"
        original.parent.mkdir(parents=True, exist_ok=True)
        im = smooth_picture(i)
        im.save(original)
        copy = tmp_path / "val" / "ab"[i % 2] / f"{i}.jpg"
        copy.parent.mkdir(parents=True, exist_ok=True)
        im.resize((320, 240)).save(copy, quality=80)
        samples += [Sample(str(original), i % 2, "train"), Sample(str(copy), i % 2, "val")]
        copies.append({str(original), str(copy)})
    same = tmp_path / "train" / "b" / "same.png"
    shutil.copyfile(samples[0].path, same)  # class a's picture, filed under b too
    samples.append(Sample(str(same), 1, "train"))
    (tmp_path / "broken.jpg").write_bytes(b"not a picture")
    samples.append(Sample(str(tmp_path / "broken.jpg"), 0, "train"))
    assert perceptual_hash(str(tmp_path / "broken.jpg")) is None

    found = {frozenset((p.a, p.b)): p for p in hash_duplicates(samples, ["a", "b"])}
    assert all(frozenset(c) in found for c in copies)  # 8 of 8
    exact = found[frozenset((samples[0].path, str(same)))]
    assert exact.exact and exact.cross_class and not exact.cross_split
    assert not any(found[frozenset(c)].exact for c in copies)
    unrelated = [k for k in found if k not in {frozenset(c) for c in copies} and str(same) not in k]
    assert unrelated == [], [sorted(k) for k in unrelated]  # different pictures are not copies
    assert all(found[frozenset(c)].similarity >= 1 - HASH_BITS / 64 for c in copies)

