"""The dataset check: the one place that decides which files are usable, and the split of the usable ones.

The Dataset page, the Train page, `scan`, and the trainer all go through `scan(spec)`, so every count shown is of
images training will really use, and skipped files carry the same wording everywhere. Each file's verdict is
cached by (path, size, mtime), so a second scan (the trainer after the Dataset page) costs almost nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace

from PIL import Image

from tl_core import paths
from tl_core.config import IMBALANCED_RATIO
from tl_core.data.images import BadImage, check_decodes, content_hash
from tl_core.data.overrides import apply_overrides
from tl_core.data.sources import DatasetSpec, ImageDataset, Problem, Sample, apply_split, list_files

MIN_SIDE = 32
MAX_SIDE = 10_000
MAX_ASPECT = 5.0


@dataclass(frozen=True)
class FileCheck:
    """One file's verdict: usable (with size, mode and content hash) or the reason it is skipped."""

    reason: str | None
    width: int = 0
    height: int = 0
    mode: str = ""
    hash: str = ""

    @property
    def usable(self) -> bool:
        return self.reason is None


@dataclass
class ImageInfo:
    path: str
    label: int
    split: str
    width: int
    height: int
    mode: str
    hash: str
    labels: tuple[int, ...] = ()  # a multi-label picture's label set (`Sample.labels`)

    @property
    def label_set(self) -> tuple[int, ...]:
        return self.labels or (self.label,)


@dataclass
class ScanReport:
    spec: DatasetSpec
    name: str
    root: str
    classes: list[str]
    counts: dict[str, dict[str, int]]
    split_source: str
    images: list[ImageInfo] = field(default_factory=list)  # usable images only, with their split
    skipped: list[Problem] = field(default_factory=list)  # files (and classes) training leaves out, with why
    warnings: list[Problem] = field(default_factory=list)  # used, but worth a look (tiny, duplicated, missing)
    multi_label: bool = False  # several labels per picture (`tl_core.data.targets`)

    @property
    def problems(self) -> list[Problem]:
        return self.skipped + self.warnings

    @property
    def n_images(self) -> int:
        return len(self.images)

    def split_counts(self) -> dict[str, int]:
        return {sp: sum(per.values()) for sp, per in self.counts.items()}

    @property
    def dataset(self) -> ImageDataset:
        """What training uses: the usable images with their split, and the skipped files."""
        samples = [Sample(im.path, im.label, im.split, im.labels) for im in self.images]
        return ImageDataset(self.name, self.root, self.classes, samples, list(self.skipped), self.split_source, self.multi_label)

    @property
    def imbalance(self) -> float:
        """Largest over smallest class in the training split (1.0: balanced, or a single class)."""
        return imbalance_ratio(list(self.counts.get("train", {}).values()))

    def hashes(self) -> dict[str, str]:
        return {im.path: im.hash for im in self.images}

    def to_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "name": self.name, "root": self.root, "classes": self.classes,
                "counts": self.counts, "split_source": self.split_source, "n_images": self.n_images,
                "multi_label": self.multi_label, "imbalance": round(self.imbalance, 3),
                "files": [{"path": im.path, "split": im.split, "class": self.classes[im.label],
                           **({"labels": [self.classes[i] for i in im.labels]} if im.labels else {})} for im in self.images],
                "skipped": [asdict(p) for p in self.skipped], "warnings": [asdict(p) for p in self.warnings],
                "problems": [asdict(p) for p in self.problems]}


def imbalance_ratio(counts: list[int] | tuple[int, ...]) -> float:
    """The largest class's images over the smallest's, among classes that have any (1.0 with fewer than two)."""
    present = [n for n in counts if n > 0]
    return max(present) / min(present) if len(present) > 1 else 1.0


def is_imbalanced(counts: list[int] | tuple[int, ...]) -> bool:
    """At or past the cut (`IMBALANCED_RATIO`) at which the scan warns, training weights classes and the
    validation figures weigh every class alike."""
    return imbalance_ratio(counts) >= IMBALANCED_RATIO


def median_short_side(paths: list[str], sample: int = 64) -> float:
    """The median short side of (up to `sample` of) these images, from their headers: decides the preprocessing
    of small images (`Preprocessing.for_image_side`) the same way for training, `compare` and the estimate."""
    step = max(1, len(paths) // sample)
    sides = []
    for p in paths[::step][:sample]:
        try:
            with Image.open(p) as img:
                sides.append(min(img.size))
        except Exception:
            continue
    return float(sorted(sides)[len(sides) // 2]) if sides else float("inf")


def check_file(path: str) -> FileCheck:
    """Is this file an image training can use? Regular file, decodable (at reduced size), with its hash."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return FileCheck("not a regular file")
        with Image.open(path) as raw:
            size, mode = raw.size, raw.mode
        check_decodes(path, min_side=64)
        return FileCheck(None, size[0], size[1], mode, content_hash(path))
    except BadImage as e:
        return FileCheck(str(e))
    except Exception as e:  # Pillow raises many types on hostile files
        return FileCheck(f"not an image ({type(e).__name__})")


class _VerdictCache:
    """Verdicts of one dataset root on disk, keyed by path and invalidated by size or mtime."""

    def __init__(self, root: str):
        self.file = paths.home() / "scans" / (hashlib.sha1(root.encode()).hexdigest()[:16] + ".json")
        try:
            self.data: dict[str, list] = json.loads(self.file.read_text())
        except (OSError, json.JSONDecodeError):
            self.data = {}

    @staticmethod
    def _stamp(path: str) -> list[int]:
        try:
            st = os.stat(path)
            return [st.st_size, st.st_mtime_ns]
        except OSError:
            return [-1, -1]

    def get(self, path: str) -> FileCheck | None:
        hit = self.data.get(path)
        if hit and hit[:2] == self._stamp(path):
            return FileCheck(*hit[2:])
        return None

    def put(self, path: str, check: FileCheck) -> None:
        self.data[path] = self._stamp(path) + [check.reason, check.width, check.height, check.mode, check.hash]

    def save(self) -> None:
        from tl_core.paths import write_json

        self.file.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.file, self.data)


def check_files(root: str, files: list[str], progress: Callable[[int, int], None] | None = None) -> dict[str, FileCheck]:
    cache = _VerdictCache(root)
    out = {p: c for p in files if (c := cache.get(p)) is not None}
    todo = [p for p in files if p not in out]
    if progress:
        progress(len(out), len(files))
    if todo:
        with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:  # Pillow and hashing release the GIL
            for i, (path, check) in enumerate(zip(todo, pool.map(check_file, todo))):
                out[path] = check
                cache.put(path, check)
                if progress and (i % 16 == 0 or i == len(todo) - 1):
                    progress(len(files) - len(todo) + i + 1, len(files))
        cache.save()
    return out


def scan(spec: DatasetSpec | str, progress: Callable[[int, int], None] | None = None) -> ScanReport:
    """Open every file, keep the usable ones, split them by the spec, and list what is wrong with the set."""
    spec = spec if isinstance(spec, DatasetSpec) else DatasetSpec(spec)
    listing = list_files(spec.source, spec.separator)
    checks = check_files(listing.root, [s.path for s in listing.samples], progress)
    skipped = list(listing.skipped) + [Problem(s.path, checks[s.path].reason) for s in listing.samples if not checks[s.path].usable]
    usable = [s for s in listing.samples if checks[s.path].usable]
    corrected = apply_overrides(replace(listing, samples=usable, skipped=skipped))  # the user's drops and relabels
    usable, skipped = corrected.samples, corrected.skipped
    kept = sorted({y for s in usable for y in s.labels or (s.label,)})  # classes are decided from usable images
    skipped += [Problem(c, "empty class: no usable image (left out of training)")
                for i, c in enumerate(listing.classes) if i not in kept]
    classes = [listing.classes[i] for i in kept]
    relabel = {old: new for new, old in enumerate(kept)}
    usable = [s.relabelled(relabel) for s in usable]
    ds = apply_split(replace(listing, classes=classes, samples=usable, skipped=skipped), spec)
    images = [ImageInfo(s.path, s.label, s.split, c.width, c.height, c.mode, c.hash, s.labels)
              for s in ds.samples for c in [checks[s.path]]]
    counts = ds.counts()
    return ScanReport(spec, listing.name, listing.root, classes, counts, ds.split_source, images, skipped,
                      _warnings(images, classes, counts), ds.multi_label)


def _warnings(images: list[ImageInfo], classes: list[str], counts: dict[str, dict[str, int]]) -> list[Problem]:
    warnings = []
    by_hash: dict[str, list[ImageInfo]] = defaultdict(list)
    for im in images:
        w, h = im.width, im.height
        if min(w, h) < MIN_SIDE:
            warnings.append(Problem(im.path, f"very small ({w}x{h}); it will be upscaled"))
        elif max(w, h) > MAX_SIDE or max(w, h) / min(w, h) > MAX_ASPECT:
            warnings.append(Problem(im.path, f"extreme size or shape ({w}x{h})"))
        by_hash[im.hash].append(im)
    for hits in by_hash.values():
        if len({im.split for im in hits}) > 1:
            where = ", ".join(f"{im.split}: {im.path}" for im in hits)
            warnings += [Problem(im.path, f"same image in several splits ({where})") for im in hits]
    for c in classes:
        warnings += [Problem(c, f"class missing from the {sp} split") for sp in counts if counts[sp][c] == 0]
    return warnings + _imbalance_warning(counts.get("train", {}))


def _imbalance_warning(train: dict[str, int]) -> list[Problem]:
    """One warning when the training classes are far apart in size: unweighted, the big class wins every doubt."""
    present = {c: n for c, n in train.items() if n > 0}
    if not is_imbalanced(list(present.values())):
        return []
    ratio = imbalance_ratio(list(present.values()))
    big, small = max(present, key=present.get), min(present, key=present.get)
    return [Problem("train split", f"imbalanced classes: {big} has {present[big]} training images, {small} {present[small]} "
                    f"({ratio:.1f}x); training weights the classes by default (setting Class balance), and balanced accuracy shows "
                    "how the small classes fare")]


def load_dataset(source: str | DatasetSpec, val_fraction: float = 0.2, seed: int = 0) -> ImageDataset:
    """The usable images of a dataset, split as its spec says (the scan decides what is usable)."""
    spec = source if isinstance(source, DatasetSpec) else DatasetSpec(source, val_fraction, seed)
    return scan(spec).dataset
