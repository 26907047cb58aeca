"""A job's state as one immutable value, and the pure function that moves it on: `reduce(state, event)`.

The events are the child's typed training events (tl_core.train.events, replayed from its events.jsonl) and two
that only the server sees: a stop request and the end of the child process. Nothing else changes a snapshot, so a
page that attaches late, a restarted server and a test replaying a recorded run all arrive at the same state,
and a page always renders one consistent value.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from tl_core.config import TrainConfig
from tl_core.data.sources import DatasetSpec
from tl_core.formats import count, loss, percent, seconds
from tl_core.train.events import (
    EpochEnded,
    EpochRow,
    Event,
    Logged,
    PhaseProgress,
    PhaseStarted,
    RunEnded,
    RunFailed,
    RunResult,
    RunStarted,
    StepEnded,
)

KILL_GRACE_S = 20.0  # after a stop request this long unanswered, the page offers Kill
STEP_POINTS = 5000  # the live curve's per-step points kept (the newest)
STEP_CHUNK = 250  # points per stored chunk: a step copies one chunk, not the whole curve
LOG_LINES = 300  # log lines kept (the newest)


class JobStatus(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # the process is gone without ending its run (killed, or lost): resumable


ACTIVE = (JobStatus.STARTING, JobStatus.RUNNING, JobStatus.STOPPING)
RESUMABLE = (JobStatus.STOPPED, JobStatus.FAILED, JobStatus.INTERRUPTED)


@dataclass(frozen=True)
class StopRequested(Event):
    """Stop was pressed in this server (the child gets SIGTERM)."""


@dataclass(frozen=True)
class ProcessEnded(Event):
    """The child process is gone; what the server knows of how it went."""

    code: int | None  # its exit status (negative: the signal) when this server started it; None when unknown
    killed: bool = False  # this server killed it after an unanswered stop request
    output: tuple[str, ...] = ()  # the last lines of its output.log, shown when it failed


@dataclass(frozen=True)
class JobSnapshot:
    """A consistent, immutable view of a job for rendering; every figure a page shows is computed here."""

    id: int
    dataset: DatasetSpec
    config: TrainConfig
    device: str
    started: float  # time.time() when the job was launched
    pid: int = 0
    workers: int = 1
    status: JobStatus = JobStatus.STARTING
    run_dir: str | None = None
    phase: str = "starting"
    progress: tuple[int, int] = (0, 0)
    phase_rate: float | None = None
    epoch: int = 0
    epochs: int = 0  # what the run plans (a fitted head needs one): the config's until the run says
    step: tuple[int, int] = (0, 0)
    images_per_s: float = 0.0
    eta: float | None = None
    history: tuple[EpochRow, ...] = ()
    step_chunks: tuple[tuple[tuple[float, float], ...], ...] = ()  # step_losses in chunks of at most STEP_CHUNK
    log: tuple[str, ...] = ()
    error: str | None = None
    suggestion: str | None = None
    result: RunResult | None = None
    stop_requested: float | None = None  # when Stop was pressed (time.time()), in this server
    last_event: float | None = None  # when the child last reported
    ended: float | None = None  # when the job ended: its last report, else when the server saw it gone

    @classmethod
    def new(cls, id: int, dataset: DatasetSpec, config: TrainConfig, device: str, started: float, pid: int = 0,
            workers: int = 1) -> JobSnapshot:
        """A job just launched: nothing reported yet."""
        return cls(id, dataset, config, device, started, pid, workers, epochs=config.epochs or 0)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def step_losses(self) -> tuple[tuple[float, float], ...]:
        """The live curve: (epochs done as a fraction, training loss of that step), the newest STEP_POINTS."""
        return tuple(p for chunk in self.step_chunks for p in chunk)[-STEP_POINTS:]

    @property
    def elapsed(self) -> float:
        """Seconds since the launch; it stops at the job's end."""
        return (self.ended or time.time()) - self.started

    @property
    def can_kill(self) -> bool:
        """Kill is offered only to a job that has ignored a stop request for the grace period."""
        return self.active and self.stop_requested is not None and self.elapsed_since_stop >= KILL_GRACE_S

    @property
    def elapsed_since_stop(self) -> float:
        return time.time() - self.stop_requested if self.stop_requested else 0.0

    @property
    def resumable(self) -> bool:
        return not self.active and self.status in RESUMABLE and bool(self.run_dir) and Path(self.run_dir, "run.json").exists()

    @property
    def run_name(self) -> str | None:
        return Path(self.run_dir).name if self.run_dir else None

    @property
    def in_training_phase(self) -> bool:
        return self.phase == "training"

    @property
    def fraction_done(self) -> float:
        """Share of the planned epochs done; a finished run is 1.0 even when it stopped early (status_text says why)."""
        if self.status == JobStatus.FINISHED:
            return 1.0
        if not self.epochs:
            return 0.0
        done = float(self.epoch)
        if self.active and self.in_training_phase:
            step, steps = self.step
            done = max(self.epoch, 1) - 1 + (step / steps if steps else 0)
        return max(0.0, min(1.0, done / self.epochs))

    @property
    def dataset_name(self) -> str:
        return Path(self.dataset.source).name or self.dataset.source

    @property
    def best(self) -> EpochRow | None:
        return max(self.history, key=lambda h: h.val_acc, default=None)

    @property
    def status_text(self) -> str:
        """What the job is doing or how it ended, in words: 'early-stopped at epoch 6 (patience 5)'."""
        if self.result and self.result.stop_reason and self.status in (JobStatus.FINISHED, JobStatus.STOPPED):
            return f"{self.status} ({self.result.stop_reason})" if self.status == JobStatus.STOPPED else self.result.stop_reason
        return str(self.status)

    @property
    def progress_text(self) -> str:
        if self.active and not self.in_training_phase and self.progress[1]:
            done, total = self.progress
            rate = f", {self.phase_rate:.0f}/s" if self.phase_rate else ""
            return f"{self.phase}: {done}/{total}{rate}"
        step, steps = self.step
        eta = f", about {seconds(self.eta)} left" if self.active and self.eta is not None else ""
        rate = f", {self.images_per_s:.0f} training images/s" if self.images_per_s else ""
        if not self.active:
            return f"{self.status_text}: {len(self.history)} of {self.epochs} epochs in {seconds(self.elapsed)}"
        return f"epoch {self.epoch}/{self.epochs}, step {step}/{steps}{rate}{eta}"

    @property
    def phase_fraction(self) -> float:
        done, total = self.progress
        return min(1.0, done / total) if total else 0.0


def reduce(state: JobSnapshot, event: Event) -> JobSnapshot:
    """The snapshot after `event`. Pure: it reads nothing but its arguments and changes neither. An ended job's
    state is final, and the status moves only forward (a terminal one comes with ProcessEnded)."""
    if not state.active:
        return state
    if isinstance(event, StopRequested):
        return _logged(replace(state, status=JobStatus.STOPPING, stop_requested=event.time), event,
                       "Stop requested; finishing the current step.")
    if isinstance(event, ProcessEnded):
        return _ended(replace(state, ended=state.last_event or event.time, eta=None), event)
    fold = _TRAINING.get(type(event))
    changes, message = fold(state, event) if fold else ({}, None)
    if message is not None:
        changes["log"] = _log_lines(state.log, event, message)
    return replace(state, last_event=event.time, **changes)  # one copy of the snapshot per event


Changes = tuple[dict, str | None]  # a training event's new field values, and its log line


def _log_lines(log: tuple[str, ...], e: Event, message: str) -> tuple[str, ...]:
    """The log with a line stamped with the event's time: what the child did when, or what this server did when."""
    return (*log[-(LOG_LINES - 1):], f"{time.strftime('%H:%M:%S', time.localtime(e.time))}  {message}")


def _logged(state: JobSnapshot, e: Event, message: str) -> JobSnapshot:
    return replace(state, log=_log_lines(state.log, e, message))


def _run_started(s: JobSnapshot, e: RunStarted) -> Changes:
    status = JobStatus.RUNNING if s.status == JobStatus.STARTING else s.status
    skipped = f"; {count(e.skipped, 'file')} skipped, see the log" if e.skipped else ""
    changes = {"run_dir": e.run_dir, "epochs": e.epochs or s.epochs, "status": status}
    return changes, f"Run {Path(e.run_dir).name} on {e.device} ({e.dtype}){skipped}"


def _phase_started(s: JobSnapshot, e: PhaseStarted) -> Changes:
    return {"phase": e.phase, "progress": (0, 0), "phase_rate": None}, e.message


def _phase_progress(s: JobSnapshot, e: PhaseProgress) -> Changes:
    return {"phase": e.phase, "progress": (e.done, e.total), "phase_rate": e.rate}, None


def _step_ended(s: JobSnapshot, e: StepEnded) -> Changes:
    point, chunks = (e.epoch - 1 + e.step / e.steps, e.loss), s.step_chunks
    if chunks and len(chunks[-1]) < STEP_CHUNK:
        chunks = (*chunks[:-1], (*chunks[-1], point))
    else:  # a new chunk; the oldest go once the kept ones hold STEP_POINTS without it
        chunks = (*chunks[max(0, len(chunks) - STEP_POINTS // STEP_CHUNK):], (point,))
    return {"epoch": e.epoch, "step": (e.step, e.steps), "images_per_s": e.images_per_s, "eta": e.eta, "step_chunks": chunks}, None


def _epoch_ended(s: JobSnapshot, e: EpochEnded) -> Changes:
    r = e.row
    return ({"history": (*s.history, r), "epoch": r.epoch}, f"Epoch {r.epoch}/{e.epochs}: train acc {percent(r.train_acc)}, "
            f"val acc {percent(r.val_acc)}, val loss {loss(r.val_loss)}" + (" (best)" if e.improved else ""))


def _message(s: JobSnapshot, e: Logged) -> Changes:
    return {}, e.message


def _run_failed(s: JobSnapshot, e: RunFailed) -> Changes:
    return {"error": e.message, "suggestion": e.suggestion, "run_dir": s.run_dir or e.run_dir}, f"Error: {e.message}"


def _run_ended(s: JobSnapshot, e: RunEnded) -> Changes:
    r = e.result
    why = f" ({r.stop_reason})" if r.stop_reason else ""
    return {"result": r}, f"Run {r.status}{why}: best val acc {percent(r.best_val_accuracy)} after {seconds(r.seconds)}"


_TRAINING = {RunStarted: _run_started, PhaseStarted: _phase_started, PhaseProgress: _phase_progress, StepEnded: _step_ended,
             EpochEnded: _epoch_ended, Logged: _message, RunFailed: _run_failed, RunEnded: _run_ended}


def _ended(s: JobSnapshot, e: ProcessEnded) -> JobSnapshot:
    """The process is gone: its final event says how it ended; without one, its exit says why."""
    if s.result:
        return replace(s, status=JobStatus(s.result.status))
    if s.error:
        return replace(s, status=JobStatus.FAILED)
    if s.stop_requested and e.code == -signal.SIGTERM:  # stopped before it could listen: nothing to keep
        return _logged(replace(s, status=JobStatus.STOPPED), e, "Stopped before training began.")
    if e.killed:
        return _failed(s, e, JobStatus.INTERRUPTED, "Killed after the stop request went unanswered; the run keeps its "
                       "finished epochs.", "Resume it to continue from its last finished epoch.")
    if e.code is not None and e.code < 0:
        return _failed(s, e, JobStatus.FAILED, f"The training process died (signal {-e.code}).",
                       "Its last output is in the log below; resume the run to continue from its last finished epoch.")
    if e.code:
        said = next((line[7:] for line in reversed(e.output) if line.startswith("error: ")), None)
        return _failed(s, e, JobStatus.FAILED, said or f"The training process exited with code {e.code}.", "See the log below.")
    # gone while this server was not watching (or restarting) and without a final word
    return _failed(s, e, JobStatus.INTERRUPTED, f"The training process (pid {s.pid}) is gone and its run did not finish.",
                   "Resume it to continue from its last finished epoch.")


def _failed(s: JobSnapshot, e: ProcessEnded, status: JobStatus, error: str, suggestion: str) -> JobSnapshot:
    s = _logged(replace(s, status=status, error=error, suggestion=suggestion), e, f"Error: {error}")
    if status == JobStatus.FAILED:
        s = replace(s, log=(*s.log, *(f"    {line}" for line in e.output))[-LOG_LINES:])
    return s
