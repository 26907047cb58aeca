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
from helpers import ROOT, TINY, fake_run, run_cli

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
    save_trainer_state,
)
from tl_core.train.trainer import train


def test_runs_are_listed_and_deleted_but_not_while_training(tmp_path):
    result = train("demo", TrainConfig(**TINY, epochs=1), tmp_path)
    run = load_run(result.run_dir)
    assert [r.id for r in list_runs(tmp_path)] == [run.id]
    run.write_summary(status=RUNNING)  # this process is alive: the run counts as training
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


def test_a_reused_pid_does_not_keep_a_run_running(tmp_path, capsys):
    run = fake_run(tmp_path, ["a", "b"])
    Run(run).write_summary(status=RUNNING)  # this live process: really running
    assert Run(run).summary["status"] == RUNNING
    with pytest.raises(RuntimeError, match="still training"):
        delete_run(Run(run))
    summary = json.loads((run / "summary.json").read_text())
    summary["pid_start"] = summary.get("pid_start", 0) + 1  # the pid now belongs to a process started later
    (run / "summary.json").write_text(json.dumps(summary))
    assert Run(run).summary["status"] == "interrupted"
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
