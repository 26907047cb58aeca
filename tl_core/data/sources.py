"""Find the images and classes of a dataset, whatever shape the user's folder, zip or name has."""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import random
import re
import shutil
import socket
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath

from tl_core import paths
from tl_core.config import LABEL_SEPARATOR
from tl_core.data.images import IMAGE_EXTENSIONS, BadImage, content_hash, is_hidden, require_regular

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}
MAX_ZIP_BYTES = 4 * 2**30
MAX_ZIP_FILES = 100_000
MAX_ZIP_RATIO = 200  # a zip (or member) inflating more than this is treated as a decompression bomb...
BOMB_FLOOR = 10 * 2**20  # ...once it unpacks to more than this (small text files compress well and are harmless)
DEFAULT_UPLOADS_GB = 20  # uploads/ beyond this (TL_STUDIO_UPLOADS_GB) evicts the least recently used
EXTRACTED_MARKER = ".extracted"  # next to the extracted files, never among them
TORCHVISION_DATASETS = ("Flowers102", "OxfordIIITPet", "EuroSAT")


DEMO_LABELS = "demo:labels"  # the multi-label demo: a label CSV of pictures with one or two shapes
UNSPLIT = "unsplit"  # split_source of a listing whose validation split the spec's random split will make


class DatasetError(ValueError):
    """A dataset we cannot use, with a message that says what to change."""


@dataclass(frozen=True)
class DatasetSpec:
    """Which data and how it is split: chosen once (Dataset page or CLI) and passed unchanged to the scan, the
    Train page, the trainer and run.json. The training seed never changes a split."""

    source: str = "demo"
    val_fraction: float = 0.2  # used only when the data has no validation folder
    split_seed: int = 0
    separator: str = LABEL_SEPARATOR  # a CSV's label cells: labels joined by this make a multi-label dataset

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise DatasetError("The validation fraction must be between 0 and 1.")
        if not self.separator or self.separator in "\r\n\"":
            raise DatasetError("The label separator must be a character other than a quote or a line break, such as ';'.")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_arguments(self) -> list[str]:
        """The command-line flags (`python -m tl_core train DATA ...`) that give back exactly this spec."""
        return [f"--val-fraction={self.val_fraction}", f"--split-seed={self.split_seed}",
                f"--label-separator={self.separator}"]


def describe_split(split_source: str) -> str:
    """How validation images were chosen, in words: a dataset's own val/ folder (or a CSV's split column), or the
    spec's random split."""
    return "its own validation split" if split_source == "folders" else f"validation split {split_source}"


@dataclass(frozen=True)
class Sample:
    path: str
    label: int  # the class; in a multi-label dataset the first of `labels` (what a stratified split groups by)
    split: str
    labels: tuple[int, ...] = ()  # a multi-label picture's whole label set; () when it has one class

    @property
    def target(self) -> int | tuple[int, ...]:
        """What the picture should be answered: its class, or its label set (`tl_core.data.targets`)."""
        return self.labels or self.label

    def relabelled(self, mapping: dict[int, int]) -> Sample:
        """The same picture with its class (or label set) renumbered by `mapping`."""
        labels = tuple(mapping[y] for y in self.labels)
        return Sample(self.path, labels[0] if labels else mapping[self.label], self.split, labels)


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str


@dataclass
class ImageDataset:
    """Every usable image with its class and split, plus what was skipped and why."""

    name: str
    root: str
    classes: list[str]
    samples: list[Sample]
    skipped: list[Problem] = field(default_factory=list)
    split_source: str = "folders"  # or "random 20% (seed 0)", or UNSPLIT before the spec's split
    multi_label: bool = False  # several labels per picture (a CSV's label cells), `tl_core.data.targets`

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    @property
    def splits(self) -> list[str]:
        return [s for s in ("train", "val", "test") if any(x.split == s for x in self.samples)]

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: n}} with zeros kept, so a class missing from a split shows."""
        out = {s: dict.fromkeys(self.classes, 0) for s in self.splits}
        for s in self.samples:
            for label in s.labels or (s.label,):
                out[s.split][self.classes[label]] += 1
        return out


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden(p.name))


def _class_files(folder: Path, skipped: list[Problem], root: Path | None = None) -> list[Path]:
    """Image files below one class folder (nested folders included); the rest goes to `skipped`.

    `root` is the dataset folder (by default the folder above the class, or above its split folder): a link
    that leads out of it is refused, and only regular files are kept, so a FIFO or a link to /proc cannot
    hang or leak the server.
    """
    root = (root or (folder.parent.parent if folder.parent.name.lower() in SPLIT_NAMES else folder.parent)).resolve()
    if not folder.resolve().is_relative_to(root):
        skipped.append(Problem(str(folder), f"links outside the dataset folder {root}; not read"))
        return []
    files = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(is_hidden(part) for part in rel.parts):
            if p.is_file() or is_hidden(p.name):
                skipped.append(Problem(str(p), "hidden or system file"))
            continue
        if problem := _unusable(p, root):
            if problem != "folder":
                skipped.append(Problem(str(p), problem))
        elif p.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(p)
        else:
            skipped.append(Problem(str(p), f"not an image file ({p.suffix or 'no extension'})"))
    return files


def _unusable(p: Path, root: Path) -> str | None:
    """Why a path below a class folder cannot be an image ("folder" for a plain folder), or None."""
    if p.is_symlink() and not p.resolve().is_relative_to(root):
        return f"links outside the dataset folder {root}; not read"
    try:
        require_regular(p)
    except FileNotFoundError:
        return "broken link"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    except BadImage as e:
        if p.is_dir():
            return "link to a folder; not followed" if p.is_symlink() else "folder"
        return str(e)
    return None


def _descend(root: Path) -> Path:
    """A zip or folder that wraps everything in one folder (`flowers/train/...`) is opened up, unless that folder is
    a link leading out of it: the dataset's root stays the chosen folder, and the link is refused as a class."""
    while True:
        dirs = _visible_dirs(root)
        files = [p for p in root.iterdir() if p.is_file() and not is_hidden(p.name)]
        leaves = len(dirs) == 1 and not dirs[0].resolve().is_relative_to(root.resolve())  # a link out of the folder
        if len(dirs) == 1 and not files and not leaves and dirs[0].name.lower() not in SPLIT_NAMES:
            inner = _visible_dirs(dirs[0])
            if inner:
                root = dirs[0]
                continue
        return root


def from_folder(root: str | Path, name: str | None = None) -> ImageDataset:
    """Split folders (`train/`, `val|validation|valid|test/`) of class folders, or class folders only.

    Lists candidate files only: which are usable, and the random split of layouts without a validation folder,
    are decided by the scan (`tl_core.data.scan.scan`), so counts and splits are always of usable images.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder.")
    root = _descend(root)
    top = _visible_dirs(root)
    if not top:
        raise DatasetError(f"{root} has no class folders: put each class's images in a folder named after it.")
    skipped: list[Problem] = [Problem(str(p), "hidden or system file") for p in root.iterdir() if is_hidden(p.name)]
    split_dirs = {SPLIT_NAMES[d.name.lower()]: d for d in top if d.name.lower() in SPLIT_NAMES}
    if not split_dirs:
        classes = [d.name for d in top]
        samples = [Sample(str(f), i, "train") for i, d in enumerate(top) for f in _class_files(d, skipped, root)]
        return ImageDataset(name or root.name, str(root), classes, samples, skipped, UNSPLIT)
    if "train" not in split_dirs:
        raise DatasetError(f"{root} has split folders ({', '.join(d.name for d in split_dirs.values())}) but no train/.")
    if "val" not in split_dirs and "test" in split_dirs:  # train+test only: test is the held-out split
        split_dirs["val"] = split_dirs.pop("test")
    classes = sorted({c.name for d in split_dirs.values() for c in _visible_dirs(d)})
    samples = []
    for split, d in split_dirs.items():
        for c in _visible_dirs(d):
            for f in _class_files(c, skipped, root):
                samples.append(Sample(str(f), classes.index(c.name), split))
    return ImageDataset(name or root.name, str(root), classes, samples, skipped, "folders" if "val" in split_dirs else UNSPLIT)


IMAGE_COLUMNS = ("image", "images", "file", "filename", "file_name", "path", "filepath", "picture", "img", "image_id", "id")
LABEL_COLUMNS = ("labels", "label", "class", "classes", "tags", "category", "target")
SPLIT_COLUMNS = ("split", "subset", "set")
MAX_CSV_BYTES = 64 * 2**20


def _column(header: list[str], names: tuple[str, ...]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    return next((lowered.index(n) for n in names if n in lowered), None)


def _csv_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and (line number, cells) of every other line; commas or tabs between cells."""
    if path.stat().st_size > MAX_CSV_BYTES:
        raise DatasetError(f"{path.name} is {path.stat().st_size / 2**20:.0f} MB; a label CSV may be at most "
                           f"{MAX_CSV_BYTES / 2**20:.0f} MB.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError(f"{path.name} is not UTF-8 text; save the CSV as UTF-8.") from None
    lines = text.splitlines()
    delimiter = "\t" if lines and "\t" in lines[0] and "," not in lines[0] else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        rows = [(reader.line_num, cells) for cells in reader if any(c.strip() for c in cells)]
    except csv.Error as e:
        raise DatasetError(f"{path.name} is not a readable CSV (line {reader.line_num}: {e}).") from None
    if not rows:
        raise DatasetError(f"{path.name} is empty: it needs a header (such as image,labels) and one row per picture.")
    if len(rows) > MAX_ZIP_FILES + 1:
        raise DatasetError(f"{path.name} lists {len(rows) - 1:,} pictures; the limit is {MAX_ZIP_FILES:,}.")
    return rows[0][1], rows[1:]


def _cell(cells: list[str], column: int | None) -> str:
    return cells[column].strip() if column is not None and column < len(cells) else ""


def _csv_file(cell: str, root: Path) -> tuple[Path | None, str | None]:
    """A picture named by a CSV cell, relative to the CSV's folder, or why it cannot be one. A name without an
    extension finds the picture with one (Kaggle's id columns)."""
    name = cell.strip().replace("\\", "/")
    if not name:
        return None, "no file name"
    if PurePosixPath(name).is_absolute() or name[1:3] == ":/" or ".." in PurePosixPath(name).parts:
        return None, f"{name!r} points outside the CSV's folder; paths are relative to it"
    path = root / name
    if not path.suffix and not path.exists():
        path = next((path.with_name(path.name + ext) for ext in sorted(IMAGE_EXTENSIONS)
                     if path.with_name(path.name + ext).is_file()), path)
    if not path.resolve().is_relative_to(root.resolve()):
        return None, f"{name!r} links outside the CSV's folder; not read"
    if not path.is_file():
        return None, f"{name} not found"
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return None, f"{name} is not an image file ({path.suffix or 'no extension'})"
    return path, None


def from_csv(path: str | Path, separator: str = LABEL_SEPARATOR, name: str | None = None) -> ImageDataset:
    """Pictures and labels listed in a CSV: a header naming the picture column (image, file, path, ...) and the
    label column (labels, label, class, ...), paths relative to the CSV's folder, an optional split column.

    Label cells that join several labels with `separator` make a multi-label dataset. A row that cannot be used
    (no file, a path out of the folder, no label, an unknown split, a picture listed twice) is a problem with its
    line number, not a failure."""
    path = Path(path).resolve()
    root = path.parent
    header, rows = _csv_rows(path)
    image_col, label_col, split_col = (_column(header, names) for names in (IMAGE_COLUMNS, LABEL_COLUMNS, SPLIT_COLUMNS))
    if image_col is None or label_col is None:
        raise DatasetError(f"{path.name}'s header ({', '.join(header)}) needs a picture column ({', '.join(IMAGE_COLUMNS[:4])}) "
                           f"and a label column ({', '.join(LABEL_COLUMNS[:4])}).")
    listed: list[tuple[Path, list[str], str]] = []
    skipped: list[Problem] = []
    first_line: dict[Path, int] = {}

    def bad(line: int, reason: str, file: Path | str = path) -> None:
        skipped.append(Problem(str(file), f"line {line} of {path.name}: {reason}"))

    for line, cells in rows:
        file, why = _csv_file(_cell(cells, image_col), root)
        labels = list(dict.fromkeys(x.strip() for x in _cell(cells, label_col).split(separator) if x.strip()))
        split = _cell(cells, split_col).lower()
        if file is None:
            bad(line, why)
        elif not labels:
            bad(line, "no label", file)
        elif split and split not in SPLIT_NAMES:
            bad(line, f"unknown split {split!r} (use train, val or test)", file)
        elif file in first_line:
            bad(line, f"listed again (first on line {first_line[file]}); the first row is used", file)
        else:
            first_line[file] = line
            listed.append((file, labels, SPLIT_NAMES.get(split, "train")))
    if not listed:
        raise DatasetError(f"{path.name} lists no usable picture" + (f" ({skipped[0].reason})." if skipped else "."))
    classes = sorted({label for _, labels, _ in listed for label in labels})
    multi = any(len(labels) > 1 for _, labels, _ in listed)
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for file, labels, split in listed:
        ids = tuple(sorted(index[x] for x in labels))
        samples.append(Sample(str(file), ids[0], split, ids if multi else ()))
    splits = {s.split for s in samples}
    if "val" not in splits and "test" in splits:  # train and test only: test is the held-out split, as with folders
        samples = [replace(s, split="val") if s.split == "test" else s for s in samples]
    source = "folders" if {"val", "test"} & splits else UNSPLIT
    return ImageDataset(name or f"{root.name} ({path.name})", str(root), classes, samples, skipped, source, multi)


def random_split(ds: ImageDataset, val_fraction: float, seed: int) -> ImageDataset:
    """Stratified: each class keeps the fraction (at least one image when it has two or more)."""
    if not 0 < val_fraction < 1:
        raise DatasetError("The validation fraction must be between 0 and 1.")
    rng = random.Random(seed)
    samples = []
    groups: dict[int | tuple[int, ...], list[Sample]] = defaultdict(list)  # a multi-label set: one group per label set
    for s in sorted(ds.split("train"), key=lambda s: s.path):
        groups[s.target].append(s)
    for key in sorted(groups, key=lambda k: (k,) if isinstance(k, int) else k):
        items = groups[key]
        rng.shuffle(items)
        n_val = round(len(items) * val_fraction)
        n_val = max(n_val, 1) if len(items) >= 2 else 0
        samples += [replace(s, split="val" if i < n_val else "train") for i, s in enumerate(items)]
    samples += [s for s in ds.samples if s.split == "test"]
    return replace(ds, samples=samples, split_source=f"random {val_fraction:.0%} (seed {seed})")


def apply_split(ds: ImageDataset, spec: DatasetSpec) -> ImageDataset:
    """The spec's random split where the data has no validation folder; folder splits are kept as they are."""
    return random_split(ds, spec.val_fraction, spec.split_seed) if ds.split_source == UNSPLIT else ds


def uploads_dir() -> Path:
    return paths.home() / "uploads"


def safe_extract(archive: str | Path, target: str | Path) -> Path:
    """Extract a user's zip with no path outside `target`, no links, and bounded size and count.

    Everything is checked from the headers before a byte is written, and again while writing, since
    headers can lie. Any refusal or failure is one DatasetError line.
    """
    target = Path(target).resolve()
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError):
        raise DatasetError("The upload is not a valid .zip file.") from None
    with zf:
        members = zf.infolist()
        _check_members(members, Path(archive).stat().st_size)
        target.mkdir(parents=True, exist_ok=True)
        written = 0
        for m in members:
            if not m.is_dir() and not any(is_hidden(p) for p in PurePosixPath(m.filename).parts):
                written = _extract_member(zf, m, target, written)
    return target


def _check_members(members: list[zipfile.ZipInfo], archive_size: int) -> None:
    """Refuse from the central directory alone: too many entries, too big, a bomb, unsafe or encrypted entries."""
    if len(members) > MAX_ZIP_FILES:
        raise DatasetError(f"The zip holds {len(members):,} entries; the limit is {MAX_ZIP_FILES:,}.")
    total = sum(m.file_size for m in members)
    if total > MAX_ZIP_BYTES:
        raise DatasetError(f"The zip unpacks to {total / 2**30:.1f} GB; the limit is {MAX_ZIP_BYTES / 2**30:.0f} GB.")
    if total > BOMB_FLOOR and total > MAX_ZIP_RATIO * max(archive_size, 1):
        raise DatasetError(f"The zip unpacks to {total / 2**20:,.0f} MB from {archive_size / 2**10:,.0f} KB "
                           f"({total / max(archive_size, 1):,.0f}x): refused as a zip bomb.")
    folders = {str(parent) for m in members for parent in PurePosixPath(m.filename.replace("\\", "/")).parents}
    for m in members:
        name = PurePosixPath(m.filename.replace("\\", "/"))
        if name.is_absolute() or ".." in name.parts or (m.filename[1:3] == ":/"):
            raise DatasetError(f"Unsafe path in zip: {m.filename!r} points outside the dataset.")
        if (m.external_attr >> 16) & 0o170000 == 0o120000:
            raise DatasetError(f"The zip contains a symbolic link ({m.filename}); links are not accepted.")
        if m.flag_bits & 0x1:
            raise DatasetError(f"The zip is password-protected ({m.filename}); upload a zip without a password.")
        if not m.is_dir() and str(name) in folders:
            raise DatasetError(f"The zip holds both a file and a folder named {m.filename!r}; rename one of them.")
        if m.compress_size and m.file_size / m.compress_size > MAX_ZIP_RATIO and m.file_size > BOMB_FLOOR:
            raise DatasetError(f"{m.filename} inflates {m.file_size / m.compress_size:.0f}x: refused as a zip bomb.")


def _extract_member(zf: zipfile.ZipFile, m: zipfile.ZipInfo, target: Path, written: int) -> int:
    """Write one entry, never more bytes than its header announced; returns the running total."""
    dest = (target / m.filename).resolve()
    if not dest.is_relative_to(target):
        raise DatasetError(f"Unsafe path in zip: {m.filename!r}.")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(m) as src, open(dest, "wb") as out:
            size = 0
            while chunk := src.read(1 << 20):
                size += len(chunk)
                if size > m.file_size or written + size > MAX_ZIP_BYTES:  # sizes in the header can lie
                    raise DatasetError(f"{m.filename} unpacks to more than the zip's header says: refused as a zip bomb.")
                out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise DatasetError(f"The zip is damaged at {m.filename} ({e}); create it again and re-upload.") from None
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        raise DatasetError(f"The zip holds both a file and a folder at {m.filename!r}; rename one of them.") from None
    except (NotImplementedError, RuntimeError) as e:  # unknown compression method, encryption
        raise DatasetError(f"Cannot unpack {m.filename}: {e}.") from None
    except OSError as e:
        raise DatasetError(f"Cannot write {m.filename} while unpacking: {e.strerror}.") from None
    return written + size


def from_zip(archive: str | Path, separator: str = LABEL_SEPARATOR) -> ImageDataset:
    """Extract once per content (a new zip never reuses an old folder); a refused upload leaves nothing behind.
    A zip whose top folder holds one .csv is read as that label CSV (Kaggle's layout), else as class folders."""
    archive = Path(archive)
    try:
        digest = content_hash(archive)
    except BadImage as e:
        raise DatasetError(f"{archive}: {e}.") from None
    target, limit = uploads_dir() / f"{archive.stem}-{digest[:12]}", uploads_limit()  # a bad limit stops us before any work
    files, marker = target / "files", target / EXTRACTED_MARKER
    if marker.exists() and files.is_dir():
        os.utime(target)  # recently used: evicted last
    else:
        shutil.rmtree(target, ignore_errors=True)  # a partial extraction from a crash is redone
        try:
            safe_extract(archive, files)
        except BaseException as e:
            shutil.rmtree(target, ignore_errors=True)
            if isinstance(e, DatasetError):
                _discard_upload(archive)
            raise
        marker.touch()
        prune_uploads(keep=(target, archive), limit=limit)
    try:
        top = _descend(files)
        csvs = [p for p in top.glob("*.csv") if not is_hidden(p.name)]
        return from_csv(csvs[0], separator, archive.stem) if len(csvs) == 1 else from_folder(files, name=archive.stem)
    except DatasetError as e:  # an empty zip, or one without class folders: said of the zip, and nothing kept
        shutil.rmtree(target, ignore_errors=True)
        _discard_upload(archive)
        raise DatasetError(str(e).replace(str(files.resolve()), archive.name)) from None


def _discard_upload(archive: Path) -> None:
    """A refused zip that was uploaded (saved under uploads/) is not kept on the server; a user's own file is."""
    folder = archive.resolve().parent
    if folder.parent == uploads_dir().resolve():
        shutil.rmtree(folder)


def save_upload(name: str, data: bytes | memoryview, progress: Callable[[float], None] | None = None) -> Path:
    """Store an uploaded zip under its content hash: new bytes with an old name are a new dataset."""
    safe = re.sub(r"[^\w.-]", "_", Path(name).name).lstrip(".") or "upload"
    dest = uploads_dir() / hashlib.sha1(data).hexdigest()[:12] / (safe if safe.lower().endswith(".zip") else f"{safe}.zip")
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        with open(tmp, "wb") as f:
            for i in range(0, len(data), 8 << 20):
                f.write(data[i : i + (8 << 20)])
                if progress:
                    progress(min(1.0, (i + (8 << 20)) / len(data)))
        os.replace(tmp, dest)
    return dest


def uploads_limit() -> float:
    """TL_STUDIO_UPLOADS_GB in bytes; a value that is not a number of gigabytes is one clear line naming it."""
    text = os.environ.get("TL_STUDIO_UPLOADS_GB")
    if text is None:
        return DEFAULT_UPLOADS_GB * 2**30
    try:
        gb = float(text)
    except ValueError:
        gb = math.nan
    if not gb >= 0:  # NaN and negative numbers too
        raise DatasetError(f"TL_STUDIO_UPLOADS_GB must be a number of gigabytes, such as {DEFAULT_UPLOADS_GB} (it is {text!r}).")
    return gb * 2**30


def prune_uploads(keep: Iterable[Path] = (), limit: float | None = None) -> list[Path]:
    """Evict the least recently used uploads (a zip and its extraction together) past `limit` bytes
    (default: TL_STUDIO_UPLOADS_GB)."""
    limit = uploads_limit() if limit is None else limit
    groups: dict[str, list[Path]] = defaultdict(list)
    for p in uploads_dir().iterdir():
        groups[p.name[-12:]].append(p)  # `<hash12>/name.zip` and `<stem>-<hash12>/` share their key
    kept = {Path(p).resolve() for p in keep}
    sizes = {k: sum(_tree_size(p) for p in ps) for k, ps in groups.items()}
    total, evicted = sum(sizes.values()), []
    for key in sorted(groups, key=lambda k: max(p.stat().st_mtime for p in groups[k])):
        if total <= limit:
            break
        if any(p.resolve() == k or k.is_relative_to(p.resolve()) for p in groups[key] for k in kept):
            continue
        for p in groups[key]:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            evicted.append(p)
        total -= sizes[key]
    return evicted


def _tree_size(path: Path) -> int:
    if not path.is_dir():
        return path.lstat().st_size
    return sum(f.lstat().st_size for f in path.rglob("*") if not f.is_dir() or f.is_symlink())


def from_torchvision(name: str) -> ImageDataset:
    """Flowers102 / OxfordIIITPet / EuroSAT, downloaded into TL Studio's folder when online."""
    import torchvision.datasets as tvd

    if name not in TORCHVISION_DATASETS:
        raise DatasetError(f"Unknown torchvision dataset {name!r}; choose one of {', '.join(TORCHVISION_DATASETS)}.")
    root = paths.home() / "torchvision" / name
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        if name == "Flowers102":
            parts = {"train": tvd.Flowers102(root, "train", download=True), "val": tvd.Flowers102(root, "val", download=True)}
            files = {s: (d._image_files, d._labels) for s, d in parts.items()}
            classes = [f"flower_{i:03d}" for i in range(102)]
        elif name == "OxfordIIITPet":
            parts = {"train": tvd.OxfordIIITPet(root, "trainval", download=True), "val": tvd.OxfordIIITPet(root, "test", download=True)}
            files = {s: (d._images, d._labels) for s, d in parts.items()}
            classes = list(parts["train"].classes)
        else:
            d = tvd.EuroSAT(root, download=True)
            return ImageDataset(name, str(root), list(d.classes), [Sample(p, y, "train") for p, y in d.samples], split_source=UNSPLIT)
    except (OSError, RuntimeError) as e:
        raise DatasetError(
            f"Could not download {name} ({type(e).__name__}: {e}). This needs internet access; "
            "offline, use the demo dataset, a folder or a .zip instead."
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    samples = [Sample(str(p), int(y), s) for s, (fs, ys) in files.items() for p, y in zip(fs, ys)]
    return ImageDataset(name, str(root), classes, samples)


def list_files(source: str, separator: str = LABEL_SEPARATOR) -> ImageDataset:
    """Candidate files of `demo`, `torchvision:NAME`, a .zip path, a label .csv path or a folder path (nothing
    opened yet)."""
    if source == "demo":
        from tl_core.data.demo import demo_root

        return from_folder(demo_root(), name="demo (shapes)")
    if source == DEMO_LABELS:
        from tl_core.data.demo import labelled_csv

        return from_csv(labelled_csv(), name="demo (shapes, several per picture)")
    if source.startswith("torchvision:"):
        return from_torchvision(source.split(":", 1)[1])
    path = Path(source).expanduser()
    if not path.exists():
        raise DatasetError(f"{source} does not exist.")
    if path.suffix.lower() == ".zip":
        return from_zip(path, separator)
    if path.suffix.lower() == ".csv":
        return from_csv(path, separator)
    return from_folder(path)


def resolve_in_root(relative: str, root: str | Path) -> Path:
    """A server folder or label CSV chosen in the dashboard: it must exist inside the configured data root."""
    root = Path(root).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise DatasetError(f"{relative} is outside the data root {root}; only folders inside it can be used.")
    if not (path.is_dir() or (path.is_file() and path.suffix.lower() == ".csv")):
        raise DatasetError(f"{relative} is not a folder or a .csv file inside {root}.")
    return path


def server_sources(root: str | Path) -> list[str]:
    """What the dashboard offers inside the data root: its folders, and label CSVs up to one folder down."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not is_hidden(p.name)]
    found += [p for p in [*root.glob("*.csv"), *root.glob("*/*.csv")] if not is_hidden(p.name)]
    return sorted(str(p.relative_to(root)) for p in found)
