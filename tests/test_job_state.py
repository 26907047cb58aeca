"""The job state is one immutable value moved on by a pure `reduce`: the events of a real (tiny) training run fold
to the snapshot its run folder agrees with, and the process's end decides the status the way the page shows it."""

import copy
import functools
import io
import itertools
import json
import os
import re
import signal
import time

import numpy as np
import pytest

from tl_core.config import TrainConfig
from tl_core.data.sources import DatasetSpec
from tl_core.formats import percent, seconds
from tl_core.jobs.state import ACTIVE, STEP_POINTS, JobSnapshot, JobStatus, ProcessEnded, StopRequested, reduce
from tl_core.train import events as ev
from tl_core.train.runs import load_run

TINY = TrainConfig(backbone="mobilenet_v3_small", pretrained=False, strategy="full", image_size=48, batch_size=16, patience=0,
                   epochs=2)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A real two-epoch run on 24 small pictures: its events as the job's file holds them, the start, the result."""
    from tl_core.data.demo import draw
    from tl_core.train.trainer import train

    root, rng = tmp_path_factory.mktemp("shapes"), np.random.default_rng(0)
    for kind in ("circle", "square", "triangle"):
        (root / kind).mkdir()
        for i in range(8):
            draw(kind, rng, 48).save(root / kind / f"{i}.png")
    spec, log = DatasetSpec(str(root), 0.25, 0), ev.EventLog(root.parent / "events.jsonl")
    start = JobSnapshot.new(1, spec, TINY, "cpu", time.time(), os.getpid())
    result = train(spec, TINY, root.parent / "runs", [log])
    events, _ = log.read()
    return start, events, result


def fold(state: JobSnapshot, events) -> JobSnapshot:
    return functools.reduce(reduce, events, state)


def test_reduce_is_pure(recorded):
    start, events, _ = recorded
    state = start
    for e in [*events, StopRequested(time=1.0), ProcessEnded(0, time=2.0)]:
        before = copy.deepcopy(state)
        after = reduce(state, e)
        assert state == before  # the input snapshot is unchanged
        assert reduce(before, e) == after  # same input, same output
        state = after
    assert not state.active and fold(state, events) is state  # an ended job's state is final


def test_a_real_runs_events_fold_to_its_final_snapshot(recorded):
    start, events, result = recorded
    assert {type(e) for e in events} >= {ev.RunStarted, ev.PhaseStarted, ev.StepEnded, ev.EpochEnded, ev.RunEnded}
    live = fold(start, events)
    assert live.status == JobStatus.RUNNING and live.result == result  # the child has ended its run, not its process yet
    end = reduce(live, ProcessEnded(0))
    run = load_run(result.run_dir)
    assert end.status == JobStatus.FINISHED and end.run_dir == result.run_dir and end.error is None
    assert [r.to_dict() for r in end.history] == run.metrics() and (end.epoch, end.epochs) == (2, 2)
    steps = [e for e in events if isinstance(e, ev.StepEnded)]
    assert len(end.step_losses) == len(steps) and end.step_losses[-1] == (2.0, steps[-1].loss)
    assert end.fraction_done == 1.0 and end.eta is None and end.best.val_acc == result.best_val_accuracy
    assert end.ended == events[-1].time and end.elapsed == pytest.approx(events[-1].time - start.started)
    began = next(e for e in events if isinstance(e, ev.RunStarted))
    assert any(line.endswith(f"Run {end.run_name} on cpu ({began.dtype})") for line in end.log)
    assert end.log[-1].endswith(f"Run finished: best val acc {percent(result.best_val_accuracy)} after {seconds(result.seconds)}")
    assert end.progress_text == f"finished: 2 of 2 epochs in {seconds(end.elapsed)}"
    assert start.status == JobStatus.STARTING and start.history == ()  # folding left the start as it was


def test_the_process_end_says_how_a_job_ended_without_a_final_event():
    start = JobSnapshot.new(7, DatasetSpec("demo"), TINY, "cpu", 100.0, pid=4242)
    running = reduce(start, ev.RunStarted("/runs/x", ["a", "b"], "cpu", "float32", 2, False, 0, time=101.0))
    assert running.status in ACTIVE and running.last_event == 101.0

    stopping = reduce(start, StopRequested(time=102.0))
    assert stopping.status == JobStatus.STOPPING and stopping.stop_requested == 102.0
    early = reduce(stopping, ProcessEnded(-signal.SIGTERM, time=103.0))
    assert early.status == JobStatus.STOPPED and early.log[-1].endswith("Stopped before training began.")

    killed = reduce(reduce(running, StopRequested()), ProcessEnded(-signal.SIGKILL, killed=True))
    assert killed.status == JobStatus.INTERRUPTED and killed.error.startswith("Killed") and killed.ended == 101.0
    died = reduce(running, ProcessEnded(-signal.SIGSEGV))
    assert died.status == JobStatus.FAILED and died.error == f"The training process died (signal {signal.SIGSEGV})."
    said = reduce(running, ProcessEnded(1, output=("loading", "error: no usable image in /x", "bye")))
    assert said.status == JobStatus.FAILED and said.error == "no usable image in /x" and said.log[-3:] == (
        "    loading", "    error: no usable image in /x", "    bye")
    lost = reduce(running, ProcessEnded(None))
    assert lost.status == JobStatus.INTERRUPTED and "pid 4242" in lost.error and lost.eta is None


def test_the_live_curve_keeps_the_newest_points():
    start = JobSnapshot.new(1, DatasetSpec("demo"), TINY, "cpu", 0.0)
    steps = [ev.StepEnded(1 + i // 100, i % 100 + 1, 100, float(i), 1e-3, 10.0, 1.0) for i in range(STEP_POINTS + 300)]
    for n in (1, STEP_POINTS - 1, STEP_POINTS, STEP_POINTS + 1, STEP_POINTS + 300):
        curve = fold(start, steps[:n]).step_losses
        assert [loss for _, loss in curve] == [float(i) for i in range(max(0, n - STEP_POINTS), n)]
    assert curve[-1] == (STEP_POINTS / 100 + 3, STEP_POINTS + 299.0)


ZERO_RATE = re.compile(r"(?<![\d.])0(\.0+)? ?(img|images|training images)/s")


def test_a_fitted_head_run_shows_no_training_rate_anywhere(shapes_folder, tmp_path, own_weights, home):
    """A fitted head has no training steps to time: its rate is None (null in summary.json and `train --json`), no
    log line, progress text (the Train page's) or terminal bar shows "0 img/s", and the figure shown while it works
    is the embedding rate, named as such. Skipped files are counted in words ("1 file", "2 files")."""
    from rich.console import Console

    from tl_core.cli.terminal import Progress
    from tl_core.train.trainer import train

    cfg = TrainConfig(backbone="mobilenet_v3_small", weights_path=str(own_weights), strategy="features", image_size=48,
                      patience=0)
    spec = DatasetSpec(str(shapes_folder), 0.3, 1)
    terminal = io.StringIO()
    bars = Progress(Console(file=terminal, force_terminal=True, width=200))
    events: list = []
    with bars:
        result = train(spec, cfg, tmp_path / "runs", [events.append, bars])
    assert result.status == "finished" and result.images_per_s is None
    assert load_run(result.run_dir).summary["images_per_s"] is None and json.loads(json.dumps(result.to_dict()))["images_per_s"] is None
    assert all(e.images_per_s is None for e in events if isinstance(e, ev.StepEnded))
    states = list(itertools.accumulate(events, reduce, initial=JobSnapshot.new(1, spec, cfg, "cpu", time.time())))
    shown = [s.progress_text for s in states] + list(states[-1].log) + [terminal.getvalue()]
    assert not [t for t in shown if ZERO_RATE.search(t) or "img/s" in t or "training images/s" in t]
    embedding = [s.progress_text for s in states if s.phase.startswith("embedding") and s.phase_rate]
    # a rate shows once embedding has run a fifth of a second (not at all on a fast machine): images embedded per second
    assert all(re.search(r"embedding .*: \d+/\d+, \d+/s$", t) for t in embedding)
    began = next(line for line in states[-1].log if " on cpu " in line)
    assert re.search(r"; [2-9] files skipped, see the log$", began) and "(s)" not in "".join(states[-1].log)


def test_the_run_log_counts_in_words():
    start = JobSnapshot.new(1, DatasetSpec("demo"), TINY, "cpu", 0.0)
    one = reduce(start, ev.RunStarted("/runs/x", ["a", "b"], "cpu", "float32", 2, False, 1, time=1.0))
    assert one.log[-1].endswith("Run x on cpu (float32); 1 file skipped, see the log")
