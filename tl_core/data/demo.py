"""The built-in demo dataset: drawn offline and deterministically, so anyone can try the whole flow."""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tl_core import paths

CLASSES = ("circle", "cross", "square", "star", "triangle")
VERSION = "v1"
SIZE = 96


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "triangle":
        pts = [(1.0, a) for a in (0, 120, 240)]
    elif kind == "square":
        pts = [(1.0, a) for a in (45, 135, 225, 315)]
    elif kind == "star":
        pts = [(1.0 if i % 2 == 0 else 0.45, i * 36) for i in range(10)]
    else:  # cross: a plus sign as a 12-gon
        w = 0.33
        xy = [(w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w)]
        pts = [(math.hypot(x, y), math.degrees(math.atan2(y, x))) for x, y in xy]
    return [(cx + r * s * math.cos(math.radians(a + angle)), cy + r * s * math.sin(math.radians(a + angle))) for s, a in pts]


def draw(kind: str, rng: np.random.Generator, size: int = SIZE) -> Image.Image:
    """One picture: a shape of random colour, size, place and angle on a noisy gradient with clutter."""
    return draw_several((kind,), rng, size)


def draw_several(kinds: tuple[str, ...], rng: np.random.Generator, size: int = SIZE) -> Image.Image:
    """Shapes of random colour, size and angle on a noisy gradient with clutter; several side by side, one per
    column of the picture (the multi-label demo)."""
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, size)[:, None, None]
    bg = (c0 * (1 - t) + c1 * t).repeat(size, axis=1) + rng.normal(0, 12, (size, size, 3))
    img = Image.fromarray(bg.clip(0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(rng.integers(1, 4)):  # clutter lines so the task is not trivial
        d.line([tuple(rng.uniform(0, size, 2)), tuple(rng.uniform(0, size, 2))], fill=tuple(rng.integers(0, 256, 3)), width=2)
    width = size / len(kinds)
    places = []
    for column in range(len(kinds)):
        r = rng.uniform(0.2, 0.34) * width
        cx, cy = rng.uniform(r, np.array([width, size]) - r)
        places.append((column * width + cx, cy, r))
    colour = tuple(int(v) for v in (255 - (c0 + c1) / 2 + rng.normal(0, 30, 3)).clip(0, 255))
    for kind, (cx, cy, r) in zip(kinds, places):
        if kind == "circle":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            d.polygon(_polygon(kind, cx, cy, r, rng.uniform(0, 360)), fill=colour)
    return img


def build(root: Path, per_class: int = 60, val_per_class: int = 16, seed: int = 0) -> Path:
    """Write train/ and val/ class folders of PNGs under `root`; identical bytes for the same seed."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for kind in CLASSES:
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw(kind, rng).save(folder / f"{kind}_{i:03d}.png", optimize=False)
    return root


LABEL_SETS = (("circle",), ("square",), ("triangle",), ("circle", "square"), ("circle", "triangle"), ("square", "triangle"))


def build_labelled(root: Path, per_set: int = 24, seed: int = 0) -> Path:
    """A multi-label set described by a CSV: pictures of one or two shapes, `labels.csv` naming each picture's
    shapes joined by ';' (no split column: the usual stratified split applies)."""
    rng = np.random.default_rng(seed)
    (root / "pictures").mkdir(parents=True, exist_ok=True)
    rows = ["image,labels"]
    for kinds in LABEL_SETS:
        for i in range(per_set):
            name = f"pictures/{'-'.join(kinds)}_{i:03d}.png"
            draw_several(tuple(rng.permutation(kinds)), rng).save(root / name, optimize=False)
            rows.append(f"{name},{';'.join(kinds)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _generated(name: str, make: Callable[[Path], Path]) -> Path:
    """A generated dataset's folder under TL Studio's home: made once (a few seconds), atomically, then reused."""
    root = paths.home() / name
    if (root / "READY").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=".demo-"))
    make(tmp)
    (tmp / "READY").write_text("TL Studio demo dataset: shapes on noisy backgrounds.\n")
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)
    return root


def demo_root() -> Path:
    """The demo dataset's folder (class folders)."""
    return _generated(f"demo-{VERSION}", build)


def labelled_csv() -> Path:
    """The multi-label demo's `labels.csv` (one or two shapes per picture)."""
    return _generated(f"demo-labels-{VERSION}", build_labelled) / "labels.csv"
