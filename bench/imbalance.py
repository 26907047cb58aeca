"""Imbalanced classes: the same run with classes weighted (balance auto) and without (balance none).

Ants vs bees with the bees cut to a tenth in train (every Nth bee, copied into a temporary folder; val untouched,
so it stays balanced and its accuracy and balanced accuracy say how each class fares). Each run trains in-process
with MobileNetV2's ImageNet weights and is then scored by `evaluate` (the predictor's figures, as the Predict page
and `python -m tl_core evaluate` give them).

    TORCH_HOME=/tmp/th python3 bench/imbalance.py [--data ../shared/data/datasets/hymenoptera_data] [--keep 10]
                                                  [--strategies features finetune] [--epochs 2]

Prints one JSON object: per strategy and balance setting, accuracy, balanced accuracy, per-class recall, the
class weights used and the training seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "datasets" / "hymenoptera_data"


def imbalanced_copy(data: Path, target: Path, cut: str, keep: int) -> dict[str, int]:
    """train/ and val/ of `data` copied under `target` (a dataset's links out of its folder are not followed), with
    only every `keep`-th training image of class `cut`; returns the training images per class."""
    counts = {}
    for split in ("train", "val"):
        for folder in sorted(p for p in (data / split).iterdir() if p.is_dir()):
            files = sorted(f for f in folder.iterdir() if f.is_file())
            if split == "train" and folder.name == cut:
                files = files[::keep]
            (target / split / folder.name).mkdir(parents=True)
            for f in files:
                shutil.copyfile(f, target / split / folder.name / f.name)
            if split == "train":
                counts[folder.name] = len(files)
    return counts


def one_run(data: Path, runs: Path, strategy: str, balance: str, epochs: int) -> dict:
    from tl_core.config import TrainConfig
    from tl_core.train.trainer import train
    from tl_core.use.predict import evaluate

    config = TrainConfig(strategy=strategy, balance=balance, seed=0, patience=0,
                         **({"epochs": epochs} if strategy != "features" else {}))
    t = time.perf_counter()
    result = train(str(data), config, runs)
    took = time.perf_counter() - t
    ev = evaluate(result.run_dir)
    summary = json.loads((Path(result.run_dir) / "summary.json").read_text())
    return {"accuracy": round(ev.accuracy, 4), "balanced_accuracy": round(ev.balanced_accuracy, 4),
            "recall": {c["class"]: c["recall"] for c in ev.per_class}, "class_weights": summary.get("class_weights"),
            "threshold": round(ev.threshold, 4) if ev.threshold is not None else None, "train_seconds": round(took, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cut", default="bees", help="the class cut down in train")
    ap.add_argument("--keep", type=int, default=10, help="keep every Nth training image of that class")
    ap.add_argument("--strategies", nargs="+", default=["features"], choices=["features", "finetune", "full"])
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the strategies that train by steps")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TL_STUDIO_HOME", str(Path(tmp) / "home"))
        data = Path(tmp) / "imbalanced"
        counts = imbalanced_copy(args.data, data, args.cut, args.keep)
        out = {"train_counts": counts, "runs": {}}
        for strategy in args.strategies:
            out["runs"][strategy] = {balance: one_run(data, Path(tmp) / "runs", strategy, balance, args.epochs)
                                     for balance in ("none", "auto")}
        print(json.dumps(out))


if __name__ == "__main__":
    main()
