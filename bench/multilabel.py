"""Several labels per picture on real photos: ant-only, bee-only, and an ant photo beside a bee photo.

Every picture is two photos side by side (two ants, two bees, or an ant and a bee, in either order), so a
picture's layout never gives its label set away. Training pictures are made from ants vs bees' `train/` photos,
held-back pictures from its `val/` photos (photos the run never saw), each set described by its own label CSV. Then,
as a user would, from the command line:

    python -m tl_core train DIR/train/labels.csv                 # multi-label found from the CSV
    python -m tl_core predict RUN DIR/held_back/pictures --json  # label sets, scored here (exact-set accuracy)
    python -m tl_core evaluate RUN DIR/held_back/labels.csv --json

    python3 bench/multilabel.py [--data ../shared/data/datasets/hymenoptera_data] [--per-set 120] [--strategy features] [TRAIN FLAGS]

Prints one JSON object: the held-back exact-set accuracy from `predict`, and `evaluate`'s micro/macro F1 and mAP.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
HYMENOPTERA = ROOT.parent / "shared" / "data" / "datasets" / "hymenoptera_data"
WEIGHTS = ROOT.parent / "shared" / "data" / "weights" / "mobilenet_v2_qnnpack_dequantized-93d7100e.pth"
SETS = (("ants",), ("bees",), ("ants", "bees"))
SIDE = 448  # each photo a 224-px square: the size the backbone was trained at


def half(path: Path) -> Image.Image:
    """The photo's centre square (most of a 4:3 photo), half the picture wide; the picture's other rows are grey."""
    img = Image.open(path).convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    tile = img.crop((left, top, left + side, top + side)).resize((SIDE // 2, SIDE // 2), Image.BILINEAR)
    column = Image.new("RGB", (SIDE // 2, SIDE), (124, 116, 104))
    column.paste(tile, (0, SIDE // 4))
    return column


def build(split_dir: Path, out: Path, per_set: int, seed: int) -> Path:
    """`per_set` pictures of each label set from the photos of one split, and `labels.csv` describing them."""
    rng = random.Random(seed)
    photos = {c: sorted((split_dir / c).iterdir()) for c in ("ants", "bees")}
    (out / "pictures").mkdir(parents=True, exist_ok=True)
    rows = ["image,labels"]
    for labels in SETS:
        for i in range(per_set):
            kinds = [labels[0], labels[0]] if len(labels) == 1 else list(labels)
            rng.shuffle(kinds)
            canvas = Image.new("RGB", (SIDE, SIDE))
            for column, kind in enumerate(kinds):
                canvas.paste(half(rng.choice(photos[kind])), (column * SIDE // 2, 0))
            name = f"pictures/{'-'.join(labels)}_{i:03d}.jpg"
            canvas.save(out / name, quality=92)
            rows.append(f"{name},{';'.join(labels)}")
    (out / "labels.csv").write_text("\n".join(rows) + "\n")
    return out / "labels.csv"


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "tl_core", *args], env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"python -m tl_core {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HYMENOPTERA)
    parser.add_argument("--per-set", type=int, default=120, help="training pictures per label set (held back: half)")
    parser.add_argument("--strategy", default="features")
    args, train_flags = parser.parse_known_args()  # other flags go to `train` as they are (--feature-views 4, ...)
    work = Path(tempfile.mkdtemp(prefix="tl-multilabel-"))
    torch_home = work / "torch"
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    (torch_home / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth").symlink_to(WEIGHTS)
    env = {**os.environ, "TORCH_HOME": str(torch_home), "TL_STUDIO_HOME": str(work / "home")}
    train_csv = build(args.data / "train", work / "train", args.per_set, 0)
    held_csv = build(args.data / "val", work / "held_back", args.per_set // 2, 1)
    t0 = time.perf_counter()
    result = json.loads(cli(env, "train", str(train_csv), "--strategy", args.strategy, *train_flags,
                            "--runs-dir", str(work / "runs"), "--json").splitlines()[-1])
    seconds = time.perf_counter() - t0
    answers = json.loads(cli(env, "predict", result["run_dir"], str(held_csv.parent / "pictures"), "--json"))["predictions"]
    right = sum({d["label"] for d in a["labels"]} == set(Path(a["file"]).name.split("_")[0].split("-")) for a in answers)
    ev = json.loads(cli(env, "evaluate", result["run_dir"], str(held_csv), "--json"))
    print(json.dumps({
        "strategy": args.strategy, "train_flags": train_flags, "train_pictures": 3 * args.per_set, "held_back_pictures": len(answers),
        "train_seconds": round(seconds, 1), "val_exact_set_accuracy_while_training": round(result["best_val_accuracy"], 4),
        "held_back_exact_set_accuracy_predict": round(right / len(answers), 4),
        "held_back_evaluate": {k: ev[k] for k in ("accuracy", "micro_f1", "macro_f1", "mean_average_precision")},
        "per_label": ev["per_class"],
    }, indent=1))


if __name__ == "__main__":
    main()
