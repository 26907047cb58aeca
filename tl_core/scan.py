"""The dataset check: every file opened, with a reason for each one training will skip."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from PIL import Image

from tl_core.datasets import ImageDataset, Problem
from tl_core.images import BadImage, content_hash, open_rgb

MIN_SIDE = 32
MAX_SIDE = 10_000
MAX_ASPECT = 5.0


@dataclass
class ImageInfo:
    path: str
    label: int
    split: str
    width: int
    height: int
    mode: str


@dataclass
class ScanReport:
    name: str
    root: str
    classes: list[str]
    counts: dict[str, dict[str, int]]
    split_source: str
    images: list[ImageInfo] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return len(self.images)

    def to_dict(self, with_images: bool = False) -> dict:
        d = asdict(self)
        if not with_images:
            d.pop("images")
        d["n_images"] = self.n_images
        return d


def scan(ds: ImageDataset, progress: Callable[[int, int], None] | None = None) -> ScanReport:
    """Open every image (headers and full decode at reduced size) and list what is wrong with the set."""
    problems = list(ds.skipped)
    images: list[ImageInfo] = []
    by_hash: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for i, s in enumerate(ds.samples):
        if progress:
            progress(i, len(ds.samples))
        try:
            with Image.open(s.path) as raw:
                size, mode = raw.size, raw.mode
            open_rgb(s.path, min_side=64)
        except BadImage as e:
            problems.append(Problem(s.path, str(e)))
            continue
        except Exception as e:  # Pillow raises many types on hostile files
            problems.append(Problem(s.path, f"not an image ({type(e).__name__})"))
            continue
        w, h = size
        if min(w, h) < MIN_SIDE:
            problems.append(Problem(s.path, f"very small ({w}x{h}); it will be upscaled"))
        elif max(w, h) > MAX_SIDE or max(w, h) / min(w, h) > MAX_ASPECT:
            problems.append(Problem(s.path, f"extreme size or shape ({w}x{h})"))
        images.append(ImageInfo(s.path, s.label, s.split, w, h, mode))
        by_hash[content_hash(s.path)].append((s.split, s.path))
    for hits in by_hash.values():
        if len({split for split, _ in hits}) > 1:
            where = ", ".join(f"{split}: {p}" for split, p in hits)
            problems += [Problem(p, f"same image in several splits ({where})") for _, p in hits]
    valid = ImageDataset(ds.name, ds.root, ds.classes, [], split_source=ds.split_source)
    counts = {sp: dict.fromkeys(ds.classes, 0) for sp in ds.splits}
    for im in images:
        counts[im.split][ds.classes[im.label]] += 1
    for c in ds.classes:
        if all(counts[sp][c] == 0 for sp in counts):
            problems.append(Problem(c, "empty class: no usable image"))
        else:
            problems += [Problem(c, f"class missing from the {sp} split") for sp in counts if counts[sp][c] == 0]
    if progress:
        progress(len(ds.samples), len(ds.samples))
    return ScanReport(valid.name, ds.root, ds.classes, counts, ds.split_source, images, problems)
