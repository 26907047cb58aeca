"""How long a run will take, from measured rates of the phases that run really has.

Feature extraction: check the files the scan has not seen, decode each image once, embed each (view, image) not
already in the cache, fit the head. Fine-tuning: decode once, then per epoch a forward+backward pass per
training image and a forward pass per validation image. Rates come from `speed.measure` (median of repeats on
this device) and from decoding a few of this dataset's own files; the Train page and `estimate` show the same.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from tl_core import paths, plan
from tl_core.config import TrainConfig
from tl_core.data.pipeline import decode_square
from tl_core.data.scan import ScanReport, _VerdictCache, check_file
from tl_core.devices import fast_dtype, pick_device
from tl_core.features.frozen import plan_caches
from tl_core.formats import seconds
from tl_core.measure.speed import Speed, current
from tl_core.models.backbones import Preprocessing

FIXED_SECONDS = 1.0  # building the model, loading weights, writing the run folder
SAMPLE_FILES = 6


@dataclass(frozen=True)
class Estimate:
    seconds: float
    phases: dict[str, float]  # phase name -> seconds

    def describe(self) -> str:
        parts = ", ".join(f"{name} {seconds(s)}" for name, s in self.phases.items() if s >= 0.5)
        return f"about {seconds(self.seconds)}" + (f" ({parts})" if parts else "")

    def to_dict(self) -> dict:
        return {"seconds": round(self.seconds, 1), "phases": {k: round(v, 2) for k, v in self.phases.items()}}


CHILD_IMPORTS = "import tl_core.cli.main, tl_core.train.trainer"  # what a job's process loads before its first step


def _startup_key() -> str:
    import torch

    return f"{sys.executable} | torch {torch.__version__} | {os.cpu_count()} cpus"


def child_startup_seconds() -> float:
    """Seconds a training process spends starting: a fresh interpreter importing torch, torchvision and the trainer.
    The Train page and `python -m tl_core train` both start one, and on 2 cores it takes 3-8 s, often more than a
    small run's work. Measured once per interpreter on this machine (a subprocess, as a job starts), then cached."""
    from tl_core.jobs.manager import ROOT
    from tl_core.paths import write_json

    f = paths.home() / "startup.json"
    try:
        table = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        table = {}
    key = _startup_key()
    if isinstance(table.get(key), (int, float)):
        return float(table[key])
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", CHILD_IMPORTS], check=False, capture_output=True,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    table[key] = round(time.perf_counter() - t, 2)
    f.parent.mkdir(parents=True, exist_ok=True)
    write_json(f, table)
    return table[key]


def _per_file_seconds(paths: list[str], prep: Preprocessing) -> tuple[float, float]:
    """(decode at the training size, check as the scan does) per file, medians over a few of the dataset's files."""
    decode, check = [], []
    for p in paths:
        t = time.perf_counter()
        try:
            decode_square(p, prep)
        except Exception:
            continue
        decode.append(time.perf_counter() - t)
        t = time.perf_counter()
        check_file(p)
        check.append(time.perf_counter() - t)
    return (statistics.median(decode), statistics.median(check)) if decode else (0.01, 0.005)


def estimate(report: ScanReport, config: TrainConfig, speed: Speed | None = None) -> Estimate:
    """Seconds for `train(report.spec, config)` on this machine; measures the backbone first if it never was, and
    again if its figure was taken on a busy machine and the machine is quiet now (`speed.current`)."""
    device = pick_device(config.device)
    speed = speed or current(config.backbone, device)
    run = plan.for_images(config, [im.path for im in report.images])
    prep = run.preprocessing
    pixels = (prep.crop / 224) ** 2  # rates were measured at 224 px
    counts = report.split_counts()
    n_train, n_val = counts.get("train", 0), counts.get("val", 0)
    files = [im.path for im in report.images]
    sample = files[:: max(1, len(files) // SAMPLE_FILES)][:SAMPLE_FILES]
    decode, check = _per_file_seconds(sample, prep)
    workers = max(1.0, min(8, os.cpu_count() or 1) * 0.8)  # decoding and checking run in threads
    unchecked = sum(_VerdictCache(report.root).get(p) is None for p in files)
    phases = {"starting": child_startup_seconds(), "setup": FIXED_SECONDS, "checking files": unchecked * check / workers}
    if run.fitted_head:
        caches = plan_caches(run, fast_dtype(device) if config.amp else None)
        known = [c.known() for c in caches]
        todo = [im for im in report.images if any(im.hash not in k for k in known)]
        views = sum(len(caches) if im.split == "train" else 1 for im in todo)
        phases["decoding"] = len(todo) * decode / workers
        phases["embedding"] = views * pixels / speed.images_per_s
        phases["fitting the head"] = 0.5 + 0.005 * n_train  # L-BFGS over every fold and strength (measured ~1.7 s at 244)
    else:
        train_rate = (speed.train_images_per_s or speed.images_per_s / 3) / pixels
        if config.strategy == "finetune":
            train_rate *= 1.25  # the frozen stages need no weight gradients
        elif config.strategy == "features":
            train_rate = speed.images_per_s / pixels / 1.5  # backbone runs forward only, every step
        phases["decoding"] = (n_train + n_val) * decode / workers
        shrink = [(side / prep.crop) ** 2 for side in run.sizes]
        phases["training"] = sum(shrink) * n_train / train_rate
        phases["validation"] = run.epochs * n_val * pixels * 1.5 / speed.images_per_s  # unfused eval pass
    return Estimate(sum(phases.values()), phases)
