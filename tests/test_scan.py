"""The scan: every kind of problem named with a reason, quietly, and nothing reported that is not one."""

from __future__ import annotations

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
