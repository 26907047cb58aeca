"""torchrun with two CPU processes (gloo): one model trained with DistributedDataParallel, judged against a
one-process run with the same settings (ants vs bees with the real MobileNetV2 weights when ../shared/data is
there, else the demo from scratch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
from helpers import HYMENOPTERA, MOBILENET_FILE

from tl_core.train.runs import list_runs

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="no torch.distributed/gloo")


@pytest.fixture
def task(request, tmp_path) -> tuple[str, list[str]]:
    """(DATA, flags): 40 training images per class and every validation image of ants vs bees at 128 px with the
    real weights; without ../shared/data the demo with a small network of random weights (an own weight file)."""
    if not (HYMENOPTERA.exists() and MOBILENET_FILE.exists()):
        from tl_core.data.demo import demo_root

        own = request.getfixturevalue("own_weights")
        return str(demo_root()), ["--backbone", "mobilenet_v3_small", f"--weights-path={own}", "--image-size", "64"]
    request.getfixturevalue("with_real_weights")
    data = tmp_path / "ants_bees"
    for split, n in (("train", 40), ("val", None)):
        for cls in ("ants", "bees"):
            (data / split / cls).mkdir(parents=True)
            for f in sorted((HYMENOPTERA / split / cls).glob("*.jpg"))[:n]:
                (data / split / cls / f.name).write_bytes(f.read_bytes())
    return str(data), ["--backbone", "mobilenet_v2", "--image-size", "128"]


def tl_core(home: Path, *args: str, processes: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m tl_core ...`, or under torchrun with `processes` CPU processes; own caches, one thread each."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    env = {**os.environ, "TL_STUDIO_HOME": str(home), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *launcher, "-m", "tl_core", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def report(proc: subprocess.CompletedProcess) -> dict:
    """The one JSON report: printed by rank 0 alone."""
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def one_and_two(tmp_path: Path, data: str, flags: list[str]) -> tuple[dict, dict]:
    """The same training, in one process and as two torchrun processes (separate caches: nothing is reused)."""
    results = []
    for n in (1, 2):
        runs = tmp_path / f"runs{n}"
        result = report(tl_core(tmp_path / f"home{n}", "train", data, *flags, "--runs-dir", str(runs), "--json", processes=n))
        assert [r.dir for r in list_runs(runs)] == [Path(result["run_dir"])]  # one run folder, whatever the processes
        results.append(result)
    return results[0], results[1]


def test_torchrun_fine_tunes_one_model_like_one_process(task, tmp_path):
    """Whole-network training on 80 images, a step taking all of them (40 per rank: the same gradient as one
    process, up to BatchNorm's per-rank statistics): with few steps, smaller batches make any two runs differ by
    more than 0.03 (measured: one process against itself across seeds), so the comparison would say nothing.
    BatchNorm re-estimates its statistics from each batch (per rank under torchrun): in three steps the new head
    learns from them, and that per-rank path is the one worth comparing."""
    data, flags = task
    if "mobilenet_v3_small" in flags:
        pytest.skip("../shared/data is absent: a few epochs from scratch are too noisy to compare two runs by 0.03")
    flags = [*flags, "--strategy", "full", "--epochs", "3", "--batch-size", "80", "--lr", "0.003", "--patience", "0",
             "--no-keep-bn-statistics",
             "--progressive-resize", "1"]  # the same full-size images every epoch: this compares processes, not schedules
    one, two = one_and_two(tmp_path, data, flags)
    assert one["epochs_completed"] == two["epochs_completed"] == 3
    assert abs(one["best_val_accuracy"] - two["best_val_accuracy"]) <= 0.03, (one, two)
    assert two["best_val_accuracy"] >= 0.8  # it learnt: ants vs bees, far above chance
    run = list_runs(tmp_path / "runs2")[0]
    assert run.info["processes"] == 2 and [r["epoch"] for r in run.metrics()] == [1, 2, 3]


def test_torchrun_feature_extraction_gathers_every_embedding(task, tmp_path):
    """Each rank embeds half the images; gathered back in order, the head is fitted on what one process embeds
    (clean views only: augmented views are random draws, which differ with the sharding)."""
    data, flags = task
    one, two = one_and_two(tmp_path, data, [*flags, "--strategy", "features", "--augment", "none"])
    assert one["epochs_completed"] == two["epochs_completed"] == 1
    assert abs(one["best_val_accuracy"] - two["best_val_accuracy"]) <= 0.03, (one, two)
    assert "mobilenet_v3_small" in flags or two["best_val_accuracy"] >= 0.8  # real features: far above chance
    run = list_runs(tmp_path / "runs2")[0]
    assert run.summary["head_fit"]["method"].startswith("L-BFGS") and (run.dir / "backbone.safetensors").exists()


STOP_AFTER_EPOCH_1 = """
import sys, threading
from tl_core.config import TrainConfig
from tl_core.train.events import EpochEnded
from tl_core.train.trainer import train

stop = threading.Event()  # set on rank 0 only: the other rank never sees an event
result = train("demo", TrainConfig(backbone="mobilenet_v3_small", pretrained=False, strategy="full", image_size=48,
                                   batch_size=32, patience=0, epochs=4), sys.argv[1],
               [lambda e: stop.set() if isinstance(e, EpochEnded) and e.row.epoch == 1 else None], stop)
sys.stdout.write(f"RESULT {result.status} {result.epochs_completed}\\n")  # one write: the ranks share the pipe
"""


def test_a_stop_on_rank_0_stops_every_rank_and_torchrun_resumes(tmp_path):
    script = tmp_path / "stop.py"
    script.write_text(STOP_AFTER_EPOCH_1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
                           str(tmp_path / "runs")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("RESULT stopped 1") == 2, proc.stdout  # both ranks, after the same epoch, no hang
    run = list_runs(tmp_path / "runs")[0]
    assert run.summary["status"] == "stopped" and [r["epoch"] for r in run.metrics()] == [1]
    resumed = report(tl_core(Path(os.environ["TL_STUDIO_HOME"]), "resume", str(run.dir), "--epochs", "2", "--json",
                             processes=2))
    assert resumed["status"] == "finished" and resumed["epochs_completed"] == 2
    assert [r["epoch"] for r in run.metrics()] == [1, 2] and len(list_runs(tmp_path / "runs")) == 1
