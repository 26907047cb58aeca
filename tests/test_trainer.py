"""Training end to end on CPU: real outcomes on held-out images, stop/resume, crashes, bad files."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import HYMENOPTERA

from tl_core.config import TrainConfig
from tl_core.train.events import EpochEnded, PhaseProgress, PhaseStarted, RunEnded, RunStarted, StepEnded
from tl_core.train.runs import INTERRUPTED, list_runs, load_run
from tl_core.train.trainer import TrainingError, resume, train

TINY = dict(backbone="mobilenet_v3_small", pretrained=False, strategy="full", image_size=48, batch_size=16, patience=0)


def test_demo_end_to_end_beats_chance_by_far(with_real_weights, tmp_path):
    events = []
    result = train("demo", TrainConfig(), tmp_path, [events.append])
    assert result.status == "finished" and result.epochs_completed == 1  # the feature head is fitted, one epoch
    assert result.best_val_accuracy >= 0.7  # 5 classes: chance is 0.2
    kinds = [type(e) for e in events]
    started = kinds.index(RunStarted)
    assert kinds[-1] is RunEnded and kinds.count(EpochEnded) == 1
    assert {PhaseStarted, PhaseProgress, StepEnded} <= set(kinds[started:])
    run = load_run(result.run_dir)
    assert len(run.metrics()) == 1 and run.summary["status"] == "finished" and run.summary["head_fit"]["l2"] > 0
    assert {"backbone.safetensors", "best.safetensors", "last.safetensors", "split.json"} <= {p.name for p in run.dir.iterdir()}


@pytest.mark.skipif(not HYMENOPTERA.exists(), reason="../shared/data is absent")
def test_ants_vs_bees_fast_path_reaches_095(with_real_weights, tmp_path):
    events = []
    result = train(str(HYMENOPTERA), TrainConfig(backbone="mobilenet_v2"), tmp_path, [events.append])
    assert result.best_val_accuracy >= 0.95 and result.epochs_completed == 1  # the head is fitted, not run for epochs
    assert any("chosen by cross-validation on the training split" in getattr(e, "message", "") for e in events)
    assert result.skipped == 0  # the .gif is a real image: it is used, not skipped


def test_scratch_training_fits_its_images(tmp_path):
    """No pretrained weights: the whole network (optimiser, BatchNorm, loss, schedule) must still learn."""
    cfg = TrainConfig(**{**TINY, "backbone": "resnet18"}, epochs=5, augment="none", lr=1e-3)
    rows = load_run(train("demo", cfg, tmp_path).run_dir).metrics()
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.5 and rows[-1]["train_acc"] > 0.8


def test_bad_files_are_skipped_with_reasons(shapes_folder, tmp_path):
    result = train(str(shapes_folder), TrainConfig(**TINY, epochs=1), tmp_path)
    assert result.status == "finished" and result.skipped >= 3
    skipped = {Path(s["path"]).name: s["reason"] for s in load_run(result.run_dir).summary["skipped"]}
    assert "broken.jpg" in skipped and ".DS_Store" in skipped and "notes.txt" in skipped


def test_stop_is_honoured_within_a_step_and_resume_finishes(tmp_path):
    stop = threading.Event()
    steps_after_stop = []

    def listener(e):
        if stop.is_set() and isinstance(e, StepEnded):
            steps_after_stop.append(e)
        if isinstance(e, EpochEnded) and e.row.epoch == 1:
            stop.set()

    result = train("demo", TrainConfig(**TINY, epochs=3), tmp_path, [listener], stop)
    assert result.status == "stopped" and result.epochs_completed == 1 and not steps_after_stop
    run = load_run(result.run_dir)
    assert run.has_checkpoint() and run.summary["status"] == "stopped"
    resumed = resume(run.dir)
    assert resumed.status == "finished" and resumed.epochs_completed == 3
    assert [r["epoch"] for r in run.metrics()] == [1, 2, 3]


def test_a_run_that_cannot_train_says_why_before_making_a_folder(tmp_path, shapes_folder):
    single = tmp_path / "one"
    (single / "circle").mkdir(parents=True)
    for p in list((shapes_folder / "circle").glob("*.png")):
        (single / "circle" / p.name).write_bytes(p.read_bytes())
    with pytest.raises(TrainingError, match="at least two classes") as e:
        train(str(single), TrainConfig(**TINY, epochs=1), tmp_path / "runs")
    assert e.value.run_dir is None and list_runs(tmp_path / "runs") == []  # nothing left behind


def test_a_killed_run_keeps_its_epochs_and_can_resume(tmp_path):
    runs = tmp_path / "runs"
    code = ("import sys; from tl_core.config import TrainConfig; from tl_core.train.trainer import train; "
            "train('demo', TrainConfig(backbone='mobilenet_v3_small', pretrained=False, strategy='full', "
            "image_size=48, batch_size=16, patience=0, epochs=50), sys.argv[1])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(runs)], env=os.environ.copy(),
                            cwd=Path(__file__).parents[1])
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            found = list(runs.glob("*/metrics.jsonl"))
            if found and len(found[0].read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        else:
            pytest.fail("no epoch finished in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run = list_runs(runs)[0]
    assert run.summary["status"] == INTERRUPTED
    done = len(run.metrics())
    assert done >= 2 and run.has_checkpoint()
    json.loads((run.dir / "summary.json").read_text())  # never half-written
    result = resume(run.dir, epochs=done + 1)
    assert result.status == "finished" and result.epochs_completed == done + 1


def test_runs_are_listed_and_deleted_but_not_while_training(tmp_path):
    from tl_core.train.runs import RUNNING, delete_run

    result = train("demo", TrainConfig(**TINY, epochs=1), tmp_path)
    run = load_run(result.run_dir)
    assert [r.id for r in list_runs(tmp_path)] == [run.id]
    run.write_summary(status=RUNNING)  # this process is alive: the run counts as training
    with pytest.raises(RuntimeError, match="still training"):
        delete_run(run)
    run.write_summary(status="finished")
    delete_run(run)
    assert list_runs(tmp_path) == []


def test_a_run_folder_deleted_while_training_fails_in_one_line_saying_so(tmp_path, shapes_folder):
    import shutil

    def delete_after_the_first_epoch(e) -> None:
        if isinstance(e, EpochEnded) and e.row.epoch == 1:
            shutil.rmtree(next((tmp_path / "runs").iterdir()))

    with pytest.raises(TrainingError) as caught:
        train(str(shapes_folder), TrainConfig(**TINY, epochs=2), tmp_path / "runs", [delete_after_the_first_epoch])
    assert "was deleted while the run trained" in str(caught.value) and "no epoch had finished" not in str(caught.value)


def test_a_class_only_in_val_is_refused_before_training(tmp_path):
    from conftest import solid

    for split, classes in (("train", ("red", "blue")), ("val", ("red", "blue", "green"))):
        for k, cls in enumerate(classes):
            for i in range(2):
                solid(tmp_path / "d" / split / cls / f"{i}.png", (80 * k, 20 * i, 90), size=(48, 48))
    with pytest.raises(TrainingError, match="green: validation images but no training images"):
        train(str(tmp_path / "d"), TrainConfig(**TINY, epochs=1), tmp_path / "runs")
    assert not list_runs(tmp_path / "runs")  # refused before a run folder exists
