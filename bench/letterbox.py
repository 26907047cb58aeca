"""Centre crop against letterbox where the subject is not in the middle: ants vs bees, each photo moved to the left
or right edge of a wide canvas whose rest is a grey texture the same for both classes.

    TORCH_HOME=/tmp/th python3 bench/letterbox.py [DATA] [--ratio 3] [--backbone mobilenet_v2] [--seed 0]

DATA (default ../shared/data/datasets/hymenoptera_data) holds train/ and val/ class folders. Each photo is resized
to the canvas height and placed at a random edge (seeded) of a `ratio`:1 canvas, written as JPEG to a temporary
folder; the same placement for both fits. Then a feature-extraction run (fitted head on cached embeddings, real
pretrained weights) per fit, on the wide pictures and on the photos as they are, each in a fresh TL Studio home
(nothing cached). Prints one JSON object: validation accuracy per data and fit, with run times.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "datasets" / "hymenoptera_data"
HEIGHT = 224  # canvas height: the photo's height once placed
FITS = ("crop", "letterbox")


def texture(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Smooth grey blotches (no colour, no edges like an insect's): a filler that tells neither class."""
    cells = rng.integers(80, 176, (height // 32 + 2, width // 32 + 2), dtype=np.uint8)
    grey = Image.fromarray(cells, "L").resize((width, height), Image.BICUBIC).filter(ImageFilter.GaussianBlur(8))
    return grey.convert("RGB")


def widen(photo: Image.Image, ratio: float, rng: np.random.Generator) -> Image.Image:
    """The photo at the canvas height, against the left or the right edge of a `ratio`:1 canvas."""
    width = round(HEIGHT * ratio)
    scaled = photo.resize((min(width, round(photo.width * HEIGHT / photo.height)), HEIGHT), Image.BILINEAR)
    canvas = texture(width, HEIGHT, rng)
    canvas.paste(scaled, (0 if rng.random() < 0.5 else width - scaled.width, 0))
    return canvas


def derive(source: Path, dest: Path, ratio: float, seed: int) -> int:
    """Every picture of source/split/class/ widened into dest with the same layout; returns how many."""
    from tl_core.data.images import IMAGE_EXTENSIONS, open_rgb

    rng = np.random.default_rng(seed)
    count = 0
    for path in sorted(source.glob("*/*/*")):
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        out = dest / path.relative_to(source).with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        widen(open_rgb(path), ratio, rng).save(out, quality=90)
        count += 1
    return count


def accuracy(data: Path, fit: str, backbone: str, seed: int, work: Path) -> dict:
    """One feature-extraction run with this fit, from an empty TL Studio home: its validation accuracy and time."""
    from tl_core.config import TrainConfig
    from tl_core.train.trainer import train

    home = Path(tempfile.mkdtemp(prefix=f"home-{fit}-", dir=work))
    os.environ["TL_STUDIO_HOME"] = str(home)
    t0 = time.perf_counter()
    result = train(str(data), TrainConfig(backbone=backbone, strategy="features", fit=fit, seed=seed), home / "runs")
    return {"val_accuracy": round(result.best_val_accuracy, 4), "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", nargs="?", default=str(DEFAULT_DATA), help="train/ and val/ class folders")
    p.add_argument("--ratio", type=float, default=3.0, help="canvas width : height (default 3)")
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--seed", type=int, default=0, help="placement of each photo and the training seed")
    args = p.parse_args(argv)
    source = Path(args.data)
    if not (source / "train").is_dir() or not (source / "val").is_dir():
        print(f"error: {source} has no train/ and val/ folders", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="letterbox-bench-") as tmp:
        work = Path(tmp)
        wide = work / "wide"
        pictures = derive(source, wide, args.ratio, args.seed)
        results = {name: {fit: accuracy(data, fit, args.backbone, args.seed, work) for fit in FITS}
                   for name, data in (("wide", wide), ("original", source))}
    print(json.dumps({"backbone": args.backbone, "strategy": "features", "ratio": args.ratio, "pictures": pictures,
                      "seed": args.seed, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
