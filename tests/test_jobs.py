"""Jobs are child processes: followed through their event file, re-attached by a new manager (a restarted
server), stopped within a step, killed into a resumable run, one per device across managers, and their
failures and crashes are shown with why. Each child costs ~3 s of imports, so the tests share few of them."""

import dataclasses
import os
import signal
import time

import pytest

from tl_core.cli.main import parser
from tl_core.config import TrainConfig, from_arguments, options, to_arguments
from tl_core.data.sources import DatasetSpec, Problem
from tl_core.jobs.manager import JobBusy, JobManager, train_command
from tl_core.train import events as ev
from tl_core.train.runs import load_run

TINY = dict(backbone="mobilenet_v3_small", pretrained=False, strategy="full", image_size=48, batch_size=16, patience=0)


def test_every_option_survives_the_command_line():
    """A job's command line is derived from its TrainConfig: every option, set away from its default, comes back."""
    changed = {}
    for name, kind, opt, default in options():
        if opt.choices:
            changed[name] = next(c for c in reversed(opt.choices) if c != default)
        elif kind is bool:
            changed[name] = not default
        elif kind is int:
            changed[name] = int(opt.low) + 3
        elif kind is float:
            changed[name] = 0.1 + 1 / 3 * (opt.high - opt.low) / 10  # a float that only repr() keeps exactly
        else:
            changed[name] = "-odd path=with spaces.safetensors"
    changed["backbone"] = "resnet18"
    config = TrainConfig(**changed)
    args = parser().parse_args(["train", "demo", *to_arguments(config)])
    assert from_arguments(args) == config
    assert all(getattr(config, f) != d for f, _, _, d in options() if d is not None)  # really all changed
    default = TrainConfig()
    assert from_arguments(parser().parse_args(["train", "demo", *to_arguments(default)])) == default


def test_the_command_uses_torchrun_for_several_workers(tmp_path):
    spec = DatasetSpec(str(tmp_path), 0.25, 7)
    one = train_command(spec, TrainConfig(**TINY), tmp_path / "runs", tmp_path / "ev.jsonl")
    assert one[1:5] == ["-m", "tl_core", "train", str(tmp_path)] and "--val-fraction=0.25" in one and "--split-seed=7" in one
    assert f"--events={tmp_path / 'ev.jsonl'}" in one and "--no-pretrained" in one and "--image-size=48" in one
    two = train_command(spec, TrainConfig(**TINY), tmp_path / "runs", tmp_path / "ev.jsonl", workers=2)
    assert two[1:7] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "tl_core"]
    assert two[7:] == one[3:]
    back = train_command(spec, TrainConfig(**TINY, epochs=9), tmp_path / "runs", tmp_path / "ev.jsonl", resume_dir="/r/x")
    assert back[3:6] == ["resume", "/r/x", "--epochs=9"]


def test_every_event_round_trips_exactly(tmp_path):
    row = ev.EpochRow(3, 0.1 + 0.2, 1 / 3, 2.5e-9, 0.875, 1e-3, 123.456, 7.0, 8.25, 0.9, 2)
    result = ev.RunResult("/runs/x", "stopped", 0.9, 2, 3, 12.5, 40.0, 1, "stopped by request after epoch 3")
    events = [ev.RunStarted("/runs/x", ["ants", "bees"], "cpu", "torch.bfloat16", 5, False, 1),
              ev.PhaseStarted("decoding", "Decoding images once"), ev.PhaseProgress("embedding", 3, 10, None, 12.0),
              ev.PhaseProgress("embedding", 4, 10, 2.5), ev.StepEnded(1, 2, 3, float("inf"), 1e-4, 10.0, None),
              ev.EpochEnded(row, 5, True), ev.Logged("ünïcode \"quoted\"\nnew line"),
              ev.RunEnded(result, (Problem("a/b.jpg", "not an image"),)), ev.RunEnded(result),
              ev.RunFailed("Out of memory.", "Lower it.", None)]
    assert {type(e) for e in events} == set(ev.EVENT_TYPES.values())  # every class is covered
    for e in events:
        assert ev.from_json(ev.to_json(e)) == e and "\n" not in ev.to_json(e)
    file = ev.EventLog(tmp_path / "events.jsonl")
    for e in events:
        file(e)
    with open(file.path, "a") as f:
        f.write(ev.to_json(events[0])[:20])  # a line still being written is not read yet
    got, offset = file.read()
    assert got == events
    more, same = file.read(offset)
    assert more == [] and same == offset
    with pytest.raises(ValueError):
        ev.from_json('{"type": "os.system"}')


def wait_until(condition, timeout: float = 120):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            pytest.fail("timed out")
        time.sleep(0.2)


def test_a_child_job_is_followed_reattached_refused_and_stopped(tmp_path, shapes_folder):
    """Start in one manager; a second (a restarted or second server) sees it live, cannot start another on the
    device, and stops it; the stop is honoured within a step and the device is free again."""
    server = JobManager(tmp_path / "runs", home=tmp_path / "home")
    job = server.start(str(shapes_folder), TrainConfig(**TINY, epochs=500))
    assert job.pid != os.getpid() and os.getpgid(job.pid) == job.pid  # a child in its own process group
    wait_until(lambda: job.snapshot().history)
    restarted = JobManager(tmp_path / "runs", home=tmp_path / "home")
    seen = restarted.current()
    live = seen.snapshot()
    assert seen is not job and seen.id == job.id and live.status == "running" and live.history[0].epoch == 1
    assert live.run_dir == job.snapshot().run_dir and live.config == job.config
    with pytest.raises(JobBusy, match=rf"already running on cpu \(job {job.id}, run {live.run_name}"):
        restarted.start("demo", TrainConfig(**TINY, epochs=1))
    epochs = len(job.snapshot().history)
    assert restarted.stop(seen)
    t = time.time()
    assert server.wait(job, 60) == "stopped" and time.time() - t < 15
    assert restarted.wait(seen, 10) == "stopped"
    for s in (job.snapshot(), seen.snapshot()):
        assert s.result.stop_reason.startswith("stopped by request") and s.resumable and len(s.history) >= epochs
    assert load_run(job.snapshot().run_dir).summary["status"] == "stopped"
    assert len(restarted.jobs()) == 1 and server.current() is job


def test_kill_leaves_a_resumable_run_and_crashes_and_failures_say_why(tmp_path, shapes_folder):
    jobs = JobManager(tmp_path / "runs", home=tmp_path / "home")
    crash = jobs.start(str(shapes_folder), TrainConfig(**TINY, epochs=1))
    os.kill(crash.pid, signal.SIGKILL)  # a native crash, as the server sees one
    assert jobs.wait(crash, 30) == "failed"
    assert crash.snapshot().error == "The training process died (signal 9)."

    bad = jobs.start(str(tmp_path / "missing"), TrainConfig(**TINY, epochs=1))  # the device is free again
    assert jobs.wait(bad, 60) == "failed"
    snap = bad.snapshot()
    assert "does not exist" in snap.error and snap.suggestion and not snap.resumable

    job = jobs.start(str(shapes_folder), TrainConfig(**TINY, epochs=500))
    wait_until(lambda: job.snapshot().history)
    assert not job.snapshot().can_kill  # only after a stop request left unanswered for the grace period
    assert jobs.kill(job) and jobs.wait(job, 30) == "interrupted"
    snap = job.snapshot()
    assert snap.resumable and "Killed" in snap.error
    assert load_run(snap.run_dir).summary["status"] == "interrupted"  # the Train page's history offers Resume
    later = JobManager(tmp_path / "runs", home=tmp_path / "home").current()
    assert later.id == job.id and later.snapshot().status == "interrupted" and later.snapshot().resumable


def test_a_stop_request_unanswered_offers_kill_after_the_grace_period(tmp_path):
    """Kill appears only after the grace period (no child needed: this process stands in for a live one)."""
    from tl_core.jobs import manager as jobs

    job = jobs.Job(1, tmp_path, DatasetSpec(), TrainConfig(**TINY), "cpu", os.getpid(), None, time.time(),
                   status=jobs.JobStatus.STOPPING, stop_requested=time.time())
    assert job.snapshot().active and not job.snapshot().can_kill
    job.stop_requested -= jobs.KILL_GRACE_S
    assert job.snapshot().can_kill
    assert dataclasses.replace(job.snapshot(), status=jobs.JobStatus.STOPPED).can_kill is False


def test_the_dashboards_stop_reaches_every_torchrun_worker(tmp_path):
    """Stop signals the job's whole process group: torchrun and both gloo workers end the run at one step, 'stopped'
    with its checkpoint, and it can be resumed."""
    server = JobManager(tmp_path / "runs", home=tmp_path / "home")
    job = server.start("demo", TrainConfig(**TINY, epochs=500), workers=2)
    wait_until(lambda: job.snapshot().history)
    assert server.stop(job)
    assert server.wait(job, 90) == "stopped"
    s = job.snapshot()
    assert s.workers == 2 and s.result.stop_reason.startswith("stopped by request") and s.resumable
    run = load_run(s.run_dir)
    assert run.summary["status"] == "stopped" and run.info["processes"] == 2


def test_a_job_whose_run_was_deleted_is_no_longer_shown(tmp_path, shapes_folder):
    """The sidebar and the Train page show `current()`: after its run is deleted, an ended job is gone from both."""
    import shutil

    jobs = JobManager(tmp_path / "runs", home=tmp_path / "home")
    job = jobs.start(str(shapes_folder), TrainConfig(**TINY, epochs=1))
    assert jobs.wait(job, 120) == "finished" and jobs.current() is job
    shutil.rmtree(job.snapshot().run_dir)
    assert jobs.current() is None
