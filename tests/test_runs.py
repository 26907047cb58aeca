"""Run folders (tl_core/train/runs.py): resuming over a lost trainer state, validating run files on read, and the
one-writer lock."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import solid

from tl_core.config import TrainConfig
from tl_core.train.runs import Run, list_runs, resume_point

TINY = dict(backbone="mobilenet_v3_small", pretrained=False, strategy="full", image_size=48, batch_size=16, patience=0)


def few_images(root: Path) -> Path:
    for k, cls in enumerate(("red", "blue")):
        for i in range(4):
            solid(root / cls / f"{i}.png", (40 + 150 * k, 20 * i, 200 - 150 * k), size=(48, 48))
    return root


def test_resume_over_an_unreadable_trainer_state_keeps_the_finished_epochs_and_the_best(tmp_path):
    from tl_core.train.trainer import resume, train

    first = train(str(few_images(tmp_path / "d")), TrainConfig(**TINY, epochs=2), tmp_path / "runs")
    run = Run(Path(first.run_dir))
    rows = run.metrics()
    best = max(r["val_acc"] for r in rows)
    (run.dir / "trainer_state.pt").write_bytes(b"not a torch file")
    point = resume_point(run)
    assert (point.epoch, point.best_acc, point.optimizer) == (2, best, None)
    best_before = (run.dir / "best.safetensors").read_bytes()
    lines: list[str] = []
    again = resume(first.run_dir, [lambda e: lines.append(getattr(e, "message", ""))], epochs=3)
    assert again.status == "finished" and [m["epoch"] for m in run.metrics()] == [1, 2, 3]  # nothing trained twice
    assert any("fresh optimiser" in m for m in lines)
    assert run.summary["best_val_accuracy"] >= best  # never lowered
    if run.metrics()[-1]["val_acc"] <= best:
        assert (run.dir / "best.safetensors").read_bytes() == best_before


def test_no_finished_epoch_means_no_resume_point(tmp_path):
    run = Run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_acc": 0.5}) + "\n")
    assert resume_point(run) is None  # metrics without last.safetensors: start over


def fake_run(runs: Path, name: str, config: dict | None = None, summary: dict | None = None) -> Path:
    folder = runs / name
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"config": {**TrainConfig(backbone="mobilenet_v3_small").to_dict(), **(config or {})},
                                                 "classes": ["a", "b"], "dataset": {"name": "d"}}))
    (folder / "summary.json").write_text(json.dumps({"status": "finished", "best_val_accuracy": 0.5, "epochs_completed": 1,
                                                     **(summary or {})}))
    (folder / "best.safetensors").write_bytes(b"")  # only its presence is read here
    return folder


@pytest.mark.parametrize("config, summary, why", [
    ({"lr": "fast"}, None, 'config.lr is "fast"'),
    ({"backbone": 5}, None, "config.backbone is 5"),
    ({"epochs": True}, None, "config.epochs is true"),
    ({"batch_size": -3}, None, "batch_size must be between"),
    (None, {"best_val_accuracy": "abc"}, 'best_val_accuracy is "abc"'),
    (None, {"status": {"x": 1}}, "status is"),
])
def test_a_run_with_wrong_typed_files_is_listed_as_broken_and_the_others_as_usual(tmp_path, capsys, config, summary, why):
    from tl_core.cli import main as cli
    from tl_core.train.runs import history_rows, latest_finished

    good = fake_run(tmp_path, "20260101-000000-good-0000")
    bad = fake_run(tmp_path, "20270101-000000-bad-0000", config, summary)
    runs = list_runs(tmp_path)
    assert [r.id for r in runs] == [bad.name, good.name]
    assert why in runs[0].broken and runs[1].broken is None
    assert [row["status"] for row in history_rows(runs)] == ["broken", "finished"]
    assert latest_finished(tmp_path).id == good.name
    assert cli.main(["runs", "--runs-dir", str(tmp_path), "--json"]) == 0
    assert [r["status"] for r in json.loads(capsys.readouterr().out)] == ["broken", "finished"]


HOLD_LOCK = """
import sys, time
from tl_core.train.runs import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_the_writer_lock_holds_when_the_writer_pid_is_not_visible(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    from tl_core.train.runs import RUNNING, RunBusy, RunLock

    run = fake_run(tmp_path, "20270101-000000-shared-0000", summary={"status": RUNNING, "pid": 2**22 + 17, "pid_start": 5})
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        # as seen from another PID namespace (a container, another machine): the writer's pid means nothing here
        (run / "writer.lock").write_text(json.dumps({"pid": 2**22 + 17, "pid_start": 5}))
        assert Run(run).summary["status"] == RUNNING
        with pytest.raises(RunBusy, match="being written by process"):
            with RunLock(run):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert Run(run).summary["status"] == "interrupted"  # the writer died: the kernel released its lock
    with RunLock(run):
        assert json.loads((run / "writer.lock").read_text())["pid"] == os.getpid()
    assert not (run / "writer.lock").exists()


def test_a_live_pid_without_the_lock_is_not_running(tmp_path):
    run = fake_run(tmp_path, "20270101-000000-old-0000", summary={"status": "running", "pid": os.getpid()})  # no pid_start
    assert Run(run).summary["status"] == "interrupted"
