"""Jobs are child processes: followed through their event file, re-attached by a new manager (a restarted
server), stopped within a step, killed into a resumable run, one per device across managers, and their
failures and crashes are shown with why. Each child costs ~3 s of imports, so the tests share few of them."""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import pytest
from helpers import TINY

from tl_core.config import TrainConfig
from tl_core.data.sources import DatasetSpec
from tl_core.jobs.manager import Job, JobBusy, JobManager, train_command
from tl_core.jobs.state import KILL_GRACE_S, JobSnapshot, JobStatus, StopRequested
from tl_core.train.runs import load_run


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
    pid = job.snapshot().pid
    assert pid != os.getpid() and os.getpgid(pid) == pid  # a child in its own process group
    wait_until(lambda: job.snapshot().history)
    restarted = JobManager(tmp_path / "runs", home=tmp_path / "home")
    seen = restarted.current()
    live = seen.snapshot()
    assert seen is not job and seen.state.id == job.state.id and live.status == "running" and live.history[0].epoch == 1
    assert live.run_dir == job.snapshot().run_dir and live.config == job.snapshot().config
    with pytest.raises(JobBusy, match=rf"already running on cpu \(job {job.state.id}, run {live.run_name}"):
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
    os.kill(crash.state.pid, signal.SIGKILL)  # a native crash, as the server sees one
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
    assert later.state.id == job.state.id and later.snapshot().status == "interrupted" and later.snapshot().resumable


def test_a_stop_request_unanswered_offers_kill_after_the_grace_period(tmp_path):
    """Kill appears only after the grace period (no child needed: this process stands in for a live one)."""
    job = Job(tmp_path, JobSnapshot.new(1, DatasetSpec(), TrainConfig(**TINY), "cpu", time.time(), os.getpid()))
    job.apply(StopRequested())
    assert job.snapshot().active and not job.snapshot().can_kill
    job.apply(StopRequested(time=time.time() - KILL_GRACE_S))
    assert job.snapshot().can_kill
    assert dataclasses.replace(job.snapshot(), status=JobStatus.STOPPED).can_kill is False


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


def test_clocks_stop_and_an_early_stop_says_why(tmp_path, own_weights):
    """Elapsed and ETA freeze when a job ends; early stopping is named with its epoch and patience."""
    jobs = JobManager(tmp_path)
    config = TrainConfig(**{**TINY, "patience": 1, "strategy": "features"}, weights_path=str(own_weights),
                         embedding_cache=False, epochs=6, lr=1e-7,
                         augment="none")  # a frozen backbone whose head barely moves: no gain after epoch 1
    job = jobs.start("demo", config)
    assert jobs.wait(job, 300) == "finished"
    first = job.snapshot()
    time.sleep(1.2)
    later = job.snapshot()
    assert later.elapsed == first.elapsed and later.eta is None
    assert first.result.stop_reason == "early-stopped at epoch 2 (patience 1)"
    assert "early-stopped at epoch 2 (patience 1)" in first.status_text and first.fraction_done == 1.0
    assert "2 of 6 epochs" in first.progress_text and "ETA" not in first.progress_text
    assert load_run(first.run_dir).summary["stop_reason"] == "early-stopped at epoch 2 (patience 1)"


def test_training_children_do_not_get_the_dashboard_password(monkeypatch):
    from tl_core.jobs.manager import child_environment

    monkeypatch.setenv("TL_STUDIO_PASSWORD", "s3cret")
    monkeypatch.setenv("STREAMLIT_SERVER_COOKIE_SECRET", "c00kie")
    env = child_environment()
    assert "TL_STUDIO_PASSWORD" not in env and "STREAMLIT_SERVER_COOKIE_SECRET" not in env
    assert "s3cret" not in env.values() and env["PATH"] == os.environ["PATH"] and env["PYTHONUNBUFFERED"] == "1"


def test_a_job_whose_run_was_deleted_is_no_longer_shown(tmp_path, shapes_folder):
    """The sidebar and the Train page show `current()`: after its run is deleted, an ended job is gone from both."""
    import shutil

    jobs = JobManager(tmp_path / "runs", home=tmp_path / "home")
    job = jobs.start(str(shapes_folder), TrainConfig(**TINY, epochs=1))
    assert jobs.wait(job, 120) == "finished" and jobs.current() is job
    shutil.rmtree(job.snapshot().run_dir)
    assert jobs.current() is None
