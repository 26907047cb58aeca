"""Run folders: listed, locked to one writer, deleted only when not training; broken files read as broken,
with one line naming the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY, fake_run, run_cli, solid

from tl_core.config import TrainConfig
from tl_core.train.runs import (
    RUNNING,
    Run,
    RunBroken,
    RunBusy,
    RunLock,
    delete_run,
    latest_finished,
    list_runs,
    load_run,
    load_trainer_state,
    process_start,
    resume_point,
    save_trainer_state,
)
from tl_core.train.trainer import train


def test_runs_are_listed_and_deleted_but_not_while_training(tmp_path):
    result = train("demo", TrainConfig(**TINY, epochs=1), tmp_path)
    run = load_run(result.run_dir)
    assert [r.id for r in list_runs(tmp_path)] == [run.id]
    with RunLock(run.dir):  # this process holds the writer's lock: the run counts as training
        run.write_summary(status=RUNNING)
        with pytest.raises(RuntimeError, match="still training"):
            delete_run(run)
    run.write_summary(status="finished")
    delete_run(run)
    assert list_runs(tmp_path) == []


def test_trainer_state_is_atomic_and_a_bad_file_reads_as_none(tmp_path):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))])
    opt.step()
    save_trainer_state(tmp_path, {"optimizer": opt.state_dict(), "epoch": 2})
    state = load_trainer_state(tmp_path)
    assert state["epoch"] == 2 and state["optimizer"]["param_groups"][0]["lr"] == opt.param_groups[0]["lr"]
    assert [p.name for p in tmp_path.iterdir()] == ["trainer_state.pt"]  # no temporary file left

    good = (tmp_path / "trainer_state.pt").read_bytes()
    for bad in (b"", good[: len(good) // 2]):  # empty, as a write killed at once leaves it; cut short
        (tmp_path / "trainer_state.pt").write_bytes(bad)
        assert load_trainer_state(tmp_path) is None
    (tmp_path / "trainer_state.pt").unlink()
    assert load_trainer_state(tmp_path) is None


class Tripwire:
    """A pickle that would create a file if it were ever unpickled."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


HOLD_LOCK = """
import sys, time
from tl_core.train.runs import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_one_writer_per_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):
        with pytest.raises(RunBusy, match="being written by process"):
            with RunLock(run):
                pass
        owner = json.loads((run / "writer.lock").read_text())
        assert owner == {"pid": os.getpid(), "pid_start": process_start(os.getpid())}
    assert not (run / "writer.lock").exists()

    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunBusy, match=f"process {holder.pid}"):  # another live process writes the run
            with RunLock(run):
                pass
    finally:
        holder.kill()
        holder.wait()
    with RunLock(run):  # killed without releasing: its lock is taken over
        pass

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for stale in ({"pid": dead.pid, "pid_start": None}, {"pid": os.getpid(), "pid_start": -5}):  # dead; pid reused
        (run / "writer.lock").write_text(json.dumps(stale))
        with RunLock(run):
            assert json.loads((run / "writer.lock").read_text())["pid"] == os.getpid()


def test_a_run_is_running_only_while_its_writer_holds_the_lock(tmp_path, capsys):
    run = fake_run(tmp_path, ["a", "b"])
    with RunLock(run):
        Run(run).write_summary(status=RUNNING)  # this live process writes it: really running
        assert Run(run).summary["status"] == RUNNING
        with pytest.raises(RuntimeError, match="still training"):
            delete_run(Run(run))
    assert Run(run).summary["status"] == "interrupted"  # the pid is still alive, but nobody writes the run
    assert run_cli(capsys, "runs", "--runs-dir", str(tmp_path), "--delete", run.name)[0] == 0
    assert not run.exists()


def test_a_corrupt_run_json_is_listed_as_broken(tmp_path, capsys):
    good = fake_run(tmp_path, ["a", "b"])
    broken = tmp_path / "20270101-000000-broken-0000"
    broken.mkdir()
    (broken / "run.json").write_text('{"config": {"backbone": ')
    (broken / "best.safetensors").write_bytes((good / "best.safetensors").read_bytes())
    runs = list_runs(tmp_path)
    assert [r.id for r in runs] == [broken.name, good.name]
    assert runs[1].broken is None and str(broken / "run.json") in runs[0].broken
    with pytest.raises(RunBroken, match="run.json is unreadable"):
        _ = runs[0].info
    assert latest_finished(tmp_path).id == good.name
    code, out, _ = run_cli(capsys, "runs", "--runs-dir", str(tmp_path))
    assert code == 0 and good.name in out and f"{broken.name}  broken" in out and "delete the run" in out
    code, out, _ = run_cli(capsys, "runs", "--runs-dir", str(tmp_path), "--json")
    assert [r["status"] for r in json.loads(out)] == ["broken", "finished"]


def test_class_names_in_the_weights_refuse_a_reordered_run_json(tmp_path):
    from tl_core.use.export import export
    from tl_core.use.predict import Predictor

    run = fake_run(tmp_path, ["ant", "bee"], meta_classes=["ant", "bee"])
    assert Predictor.from_run(run, "cpu").classes == ["ant", "bee"]
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "classes": ["bee", "ant"]}))
    for action in (lambda: Run(run).model_state(), lambda: export(run, tmp_path / "m.zip")):
        with pytest.raises(RunBroken) as e:
            action()
        assert str(run / "best.safetensors") in str(e.value) and "\n" not in str(e.value)
        assert "output 0 is 'ant' in the weights but 'bee' in run.json" in str(e.value)
    assert not (tmp_path / "m.zip").exists()


def test_checkpoint_errors_are_one_line_naming_the_file(tmp_path, capsys):
    from tl_core.use.predict import Predictor

    run = fake_run(tmp_path, ["a", "b", "c"], weight_classes=2)  # an old checkpoint, without class names
    with pytest.raises(ValueError) as e:
        Predictor.from_run(run, "cpu")
    message = str(e.value)
    assert str(run / "best.safetensors") in message and "3 classes" in message and "\n" not in message
    (run / "best.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(RunBroken, match="not a readable safetensors file") as e:
        Run(run).model_state()
    assert str(run / "best.safetensors") in str(e.value)

    torch.save({"optimizer": Tripwire(tmp_path / "pwned")}, run / "trainer_state.pt")
    assert load_trainer_state(run) is None and not (tmp_path / "pwned").exists()
    out = capsys.readouterr()
    assert "weights_only" not in out.out + out.err


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


def listed_run(runs: Path, name: str, config: dict | None = None, summary: dict | None = None) -> Path:
    """A run folder with just the files `runs` lists: run.json, summary.json and a best checkpoint's presence."""
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

    good = listed_run(tmp_path, "20260101-000000-good-0000")
    bad = listed_run(tmp_path, "20270101-000000-bad-0000", config, summary)
    runs = list_runs(tmp_path)
    assert [r.id for r in runs] == [bad.name, good.name]
    assert why in runs[0].broken and runs[1].broken is None
    assert [row["status"] for row in history_rows(runs)] == ["broken", "finished"]
    assert latest_finished(tmp_path).id == good.name
    assert cli.main(["runs", "--runs-dir", str(tmp_path), "--json"]) == 0
    assert [r["status"] for r in json.loads(capsys.readouterr().out)] == ["broken", "finished"]


def test_the_writer_lock_holds_when_the_writer_pid_is_not_visible(tmp_path):
    import subprocess
    import sys

    from helpers import ROOT

    from tl_core.train.runs import RUNNING, RunBusy, RunLock

    run = listed_run(tmp_path, "20270101-000000-shared-0000", summary={"status": RUNNING, "pid": 2**22 + 17, "pid_start": 5})
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
    run = listed_run(tmp_path, "20270101-000000-old-0000", summary={"status": "running", "pid": os.getpid()})  # no pid_start
    assert Run(run).summary["status"] == "interrupted"
