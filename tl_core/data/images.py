"""Decode any image a user might have into RGB, safely: bombs, truncation, odd modes, EXIF rotation."""

from __future__ import annotations

import hashlib
import os
import stat
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 80_000_000  # above this we refuse to decode (decompression bombs), before any pixel is read
Image.MAX_IMAGE_PIXELS = None  # Pillow's own check warns or raises with its words; open_rgb checks instead
# a camera's broken EXIF block costs only its metadata (the pixels decode): Pillow's warning about it would
# otherwise be printed by every command that opens the picture
warnings.filterwarnings("ignore", category=UserWarning, module="PIL.TiffImagePlugin")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
SYSTEM_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini", "__MACOSX", ".ipynb_checkpoints"}


class BadImage(ValueError):
    """A file that cannot be used as an image; the message is the reason shown to the user."""


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name in SYSTEM_NAMES or name.startswith("._")


def require_regular(path: str | Path) -> None:
    """Refuse FIFOs, devices and sockets before opening: reading one can block the server forever."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise BadImage(f"not a regular file ({_KINDS.get(stat.S_IFMT(mode), 'special file')})")


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def content_hash(path: str | Path) -> str:
    """sha1 of the bytes: finds the same image in two splits and keys the embedding cache."""
    require_regular(path)
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: 16-bit and float are rescaled, transparency is put on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.array(img, dtype=np.float32)  # one float copy, scaled in place
        lo, hi = float(arr.min()), float(arr.max())
        arr -= lo
        arr *= 255 / (hi - lo) if hi > lo else 0
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


@contextmanager
def _reasons():
    """Pillow's many exception types on hostile files, as one BadImage with the reason a person reads."""
    try:
        yield
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image (Pillow cannot identify it)") from None
    except OSError as e:
        raise BadImage(f"unreadable or truncated ({e})") from None
    except (ValueError, SyntaxError, EOFError) as e:
        raise BadImage(f"corrupt ({e})") from None


def _decoded(source: str | Path | BinaryIO, min_side: int | None) -> Image.Image:
    """Every pixel decoded, in the file's own mode, after the size check (a bomb is refused unread)."""
    if isinstance(source, (str, Path)):
        require_regular(source)
    img = Image.open(source)
    if img.width * img.height > MAX_PIXELS:
        img.close()
        raise BadImage(f"too large to decode safely ({img.width}x{img.height} pixels, limit {MAX_PIXELS:,})")
    if min_side and img.format == "JPEG":
        w, h = img.size
        scale = min(w, h) / min_side
        if scale >= 2:
            img.draft("RGB", (int(w / scale) + 1, int(h / scale) + 1))
    img.load()
    return img


def open_rgb(source: str | Path | BinaryIO, min_side: int | None = None) -> Image.Image:
    """Open, fully decode and convert one image, or raise BadImage with the reason.

    `min_side` lets JPEG decode at a reduced scale (Pillow `draft`) while keeping at least that many
    pixels on the short side: large photos decode several times faster for the same result after resizing.
    """
    with _reasons():
        return to_rgb(ImageOps.exif_transpose(_decoded(source, min_side)))


def check_decodes(path: str | Path, min_side: int | None = None) -> None:
    """Raise BadImage unless every pixel decodes: what a scan needs to know, without the RGB conversion (a 16-bit
    80-megapixel PNG is checked in its own 2 bytes a pixel, not in the float copies the conversion makes)."""
    with _reasons():
        _decoded(path, min_side).close()
