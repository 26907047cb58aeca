"""The scan: every kind of problem named with a reason, quietly, and nothing reported that is not one."""

from __future__ import annotations

import json
import shutil
import struct
import warnings
import zlib
from pathlib import Path

from helpers import dataset_zip, png_bytes, solid

from tl_core.data.scan import scan
from tl_core.data.sources import DatasetSpec


def test_scan_reports_every_kind_of_problem_with_a_reason(tmp_path, shapes_folder):
    root = tmp_path / "ds"
    for split in ("train", "val"):
        for cls in ("circle", "square"):
            shutil.copytree(shapes_folder / cls, root / split / cls)
    shutil.copytree(shapes_folder / "triangle", root / "train" / "triangle")  # missing from val
    (root / "train" / "empty").mkdir()  # empty class
    solid(root / "train" / "circle" / "tiny.png", (1, 2, 3), size=(8, 8))
    (root / "train" / ".ipynb_checkpoints").mkdir()
    report = scan(DatasetSpec(str(root)))
    reasons = {(p.path.rsplit("/", 1)[-1], p.reason.split(" (")[0]) for p in report.problems}
    assert ("broken.jpg", "not an image") in reasons or any(r[0] == "broken.jpg" for r in reasons)
    assert ("notes.txt", "not an image file") in reasons
    assert (".DS_Store", "hidden or system file") in reasons
    assert ("empty", "empty class: no usable image") in reasons
    assert ("triangle", "class missing from the val split") in reasons
    assert any(name == "tiny.png" and "very small" in why for name, why in reasons)
    dups = [p for p in report.problems if p.reason.startswith("same image in several splits")]
    assert len(dups) == 40  # 20 circle + 20 square files copied into both splits
    assert report.counts["train"]["circle"] == 11 and report.counts["val"]["triangle"] == 0
    assert {im.mode for im in report.images} == {"RGB"}


def huge_png_header(path: Path, side: int = 20_000) -> Path:
    """A valid 1x1 PNG whose header claims side x side pixels (the CRC fixed so Pillow trusts it)."""
    data = bytearray(png_bytes(size=(1, 1)))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", side, side)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def test_an_extracted_zip_has_no_marker_problem_and_huge_images_are_too_large_quietly(home, tmp_path, capfd):
    archive = tmp_path / "set.zip"
    archive.write_bytes(dataset_zip(["a", "b"]))
    for _ in range(2):  # extracted, then reused
        report = scan(DatasetSpec(str(archive)))
        assert report.n_images == 6 and report.problems == []

    root = tmp_path / "big"
    for c in ("a", "b"):
        for i in range(2):
            solid(root / c / f"{i}.png", (90 * i, 20, 40))
    huge = huge_png_header(root / "a" / "huge.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = scan(DatasetSpec(str(root)))
    reasons = {p.path: p.reason for p in report.problems}
    assert reasons[str(huge)].startswith("too large to decode safely (20000x20000 pixels")
    assert not [w for w in caught if w.category is not ResourceWarning]  # Pillow's DecompressionBombWarning
    assert "Warning" not in "".join(capfd.readouterr())


def shapes(root: Path, per_class: dict[str, tuple[int, int]]) -> Path:
    """train/ and val/ of drawn shapes: per class (training images, validation images)."""
    import numpy as np

    from tl_core.data.demo import draw

    rng = np.random.default_rng(0)
    for kind, split_counts in per_class.items():
        for split, n in zip(("train", "val"), split_counts):
            (root / split / kind).mkdir(parents=True)
            for i in range(n):
                draw(kind, rng, 48).save(root / split / kind / f"{i}.png")
    return root


def test_scan_warns_of_imbalanced_training_classes_at_the_cut_and_the_cli_says_so(tmp_path, capsys):
    from helpers import cli_out

    from tl_core.config import IMBALANCED_RATIO

    lopsided = scan(DatasetSpec(str(shapes(tmp_path / "lopsided", {"circle": (12, 3), "square": (4, 3)}))))
    assert lopsided.imbalance == 3.0 >= IMBALANCED_RATIO
    warning = next(p for p in lopsided.warnings if p.reason.startswith("imbalanced classes"))
    assert warning.path == "train split" and "circle has 12 training images, square 4 (3.0x)" in warning.reason
    assert "imbalanced classes: circle has 12" in cli_out(capsys, "scan", str(tmp_path / "lopsided"))
    assert json.loads(cli_out(capsys, "scan", str(tmp_path / "lopsided"), "--json"))["imbalance"] == 3.0
    # under the cut, and val imbalance alone (a test of the classes, not of training): no warning
    fair = scan(DatasetSpec(str(shapes(tmp_path / "fair", {"circle": (11, 9), "square": (4, 1)}))))
    assert fair.imbalance == 2.75 and not any(p.reason.startswith("imbalanced") for p in fair.problems)
