"""Build a dataset in the browser, Teachable Machine's loop: name the classes, add images (uploads or webcam
snapshots) one by one, watch the counts grow, train. The result is an ordinary class-folder dataset under the
data root, so everything else (scan, split, training) treats it like any folder.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

from PIL import Image

from tl_core.data.images import IMAGE_EXTENSIONS, BadImage, is_hidden, open_rgb
from tl_core.data.sources import DatasetError

MAX_IMAGE_BYTES = 25 * 2**20
_NAME = re.compile(r"^[\w][\w \-.]{0,63}$")
_SAVE_AS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


def check_name(name: str, what: str) -> str:
    """A dataset or class name that is a plain folder name: no path, no hidden or system name."""
    name = name.strip()
    if not _NAME.match(name) or is_hidden(name) or name.endswith("."):
        raise DatasetError(f"{what} name {name!r} is not allowed: use letters, digits, spaces, '-', '_' or '.' "
                           "(at most 64 characters, not starting with '.').")
    return name


def dataset_dir(data_root: Path, name: str) -> Path:
    return Path(data_root).resolve() / check_name(name, "Dataset")


def add_class(folder: Path, name: str) -> Path:
    path = folder / check_name(name, "Class")
    path.mkdir(parents=True, exist_ok=True)
    return path


def add_image(folder: Path, class_name: str, data: bytes) -> Path:
    """Check the bytes are an image we can train on, then store them under their content hash (adding the same
    picture twice keeps one file)."""
    if len(data) > MAX_IMAGE_BYTES:
        raise DatasetError(f"The image is {len(data) / 2**20:.0f} MB; the limit is {MAX_IMAGE_BYTES / 2**20:.0f} MB.")
    try:
        img = open_rgb(io.BytesIO(data))
        with Image.open(io.BytesIO(data)) as raw:
            suffix = _SAVE_AS.get(raw.format or "")
    except BadImage as e:
        raise DatasetError(f"Not added: {e}.") from None
    stem = hashlib.sha1(data).hexdigest()[:16]
    elsewhere = stored_in(folder, stem)
    if elsewhere and elsewhere != check_name(class_name, "Class"):
        raise DatasetError(f"Not added: this picture is already in {elsewhere!r}; one picture cannot teach two classes.")
    path = add_class(folder, class_name) / (stem + (suffix or ".png"))
    if not path.exists():
        if suffix:
            path.write_bytes(data)
        else:  # a format we decode but do not keep as it is
            img.save(path)
    return path


def stored_in(folder: Path, stem: str) -> str | None:
    """The class already holding the picture stored under `stem` (its content hash), if any."""
    for c in folder.iterdir() if folder.is_dir() else ():
        if c.is_dir() and any(f.stem == stem for f in c.iterdir()):
            return c.name
    return None


def class_counts(folder: Path) -> dict[str, int]:
    if not folder.is_dir():
        return {}
    return {c.name: sum(1 for f in c.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
            for c in sorted(folder.iterdir()) if c.is_dir() and not is_hidden(c.name)}
