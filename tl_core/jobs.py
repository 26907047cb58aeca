"""Background training jobs owned by the server process: one per device, re-attachable from any tab.

The dashboard keeps one JobManager (st.cache_resource) and only reads `JobSnapshot`s; the worker thread never
touches Streamlit. Every event is applied to the job's own state, so a page that attaches late (refresh, a
second tab, another browser) sees the curves so far. Clocks stop when a job ends: a finished job has no ETA.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from tl_core import paths
from tl_core.config import TrainConfig
from tl_core.datasets import DatasetSpec
from tl_core.devices import pick_device
from tl_core.events import (
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
from tl_core.trainer import Trainer, TrainingError, explain


class JobStatus(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"


ACTIVE = (JobStatus.STARTING, JobStatus.RUNNING, JobStatus.STOPPING)


class JobBusy(RuntimeError):
    """A job already runs on this device."""


@dataclass(frozen=True)
class JobSnapshot:
    """A consistent, immutable view of a job for rendering; every figure a page shows is computed here."""

    id: int
    dataset: DatasetSpec
    config: TrainConfig
    device: str
    status: JobStatus
    run_dir: str | None
    phase: str
    progress: tuple[int, int]
    phase_rate: float | None
    epoch: int
    epochs: int
    step: tuple[int, int]
    images_per_s: float
    eta: float | None
    elapsed: float
    history: tuple[EpochRow, ...]
    step_losses: tuple[tuple[float, float], ...]  # (epochs done as a fraction, training loss of that step)
    log: tuple[str, ...]
    error: str | None
    suggestion: str | None
    result: RunResult | None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

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
        eta = f", about {self.eta:.0f} s left" if self.active and self.eta is not None else ""
        rate = f", {self.images_per_s:.0f} training images/s" if self.images_per_s else ""
        if not self.active:
            return f"{self.status_text}: {len(self.history)} of {self.epochs} epochs in {self.elapsed:.0f} s"
        return f"epoch {self.epoch}/{self.epochs}, step {step}/{steps}{rate}{eta}"

    @property
    def phase_fraction(self) -> float:
        done, total = self.progress
        return min(1.0, done / total) if total else 0.0


@dataclass
class Job:
    id: int
    dataset: DatasetSpec
    config: TrainConfig
    device: str
    status: JobStatus = JobStatus.STARTING
    run_dir: str | None = None
    phase: str = "starting"
    progress: tuple[int, int] = (0, 0)
    phase_rate: float | None = None
    epoch: int = 0
    epochs: int | None = None  # what the run plans (a fitted head needs one), known once it starts
    step: tuple[int, int] = (0, 0)
    images_per_s: float = 0.0
    eta: float | None = None
    history: list[EpochRow] = field(default_factory=list)
    step_losses: deque = field(default_factory=lambda: deque(maxlen=5000))  # the live curve's per-step points
    log: deque = field(default_factory=lambda: deque(maxlen=300))
    error: str | None = None
    suggestion: str | None = None
    result: RunResult | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None
    stop_event: threading.Event = field(default_factory=threading.Event, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def snapshot(self) -> JobSnapshot:
        """Safe to call from any thread; elapsed stops at the job's end."""
        with self.lock:
            return JobSnapshot(
                self.id, self.dataset, self.config, self.device, self.status,
                self.run_dir, self.phase, self.progress, self.phase_rate, self.epoch, self.epochs or self.config.epochs or 0, self.step,
                self.images_per_s, self.eta if self.active else None, (self.ended or time.time()) - self.started,
                tuple(self.history), tuple(self.step_losses), tuple(self.log), self.error, self.suggestion, self.result)

    def finish(self, status: JobStatus, error: str | None = None, suggestion: str | None = None) -> None:
        with self.lock:
            self.status, self.ended, self.eta = status, time.time(), None
            if error:
                self.error, self.suggestion = error, suggestion

    def on_event(self, e: Event) -> None:
        """The job's listener: keeps what the UI draws."""
        with self.lock:
            if isinstance(e, RunStarted):
                self.run_dir, self.epochs = e.run_dir, e.epochs
                if self.status == JobStatus.STARTING:
                    self.status = JobStatus.RUNNING
                self._log(f"Run {Path(e.run_dir).name} on {e.device} ({e.dtype})"
                          + (f"; {e.skipped} file(s) skipped, see the log" if e.skipped else ""))
            elif isinstance(e, PhaseStarted):
                self.phase, self.progress, self.phase_rate = e.phase, (0, 0), None
                self._log(e.message)
            elif isinstance(e, PhaseProgress):
                self.phase, self.progress, self.phase_rate = e.phase, (e.done, e.total), e.rate
            elif isinstance(e, StepEnded):
                self.epoch, self.step = e.epoch, (e.step, e.steps)
                self.images_per_s, self.eta = e.images_per_s, e.eta
                self.step_losses.append((e.epoch - 1 + e.step / e.steps, e.loss))
            elif isinstance(e, EpochEnded):
                self.history.append(e.row)
                self.epoch = e.row.epoch
                r = e.row
                self._log(f"Epoch {r.epoch}/{e.epochs}: train acc {r.train_acc:.3f}, val acc {r.val_acc:.3f}, "
                          f"val loss {r.val_loss:.3f}" + (" (best)" if e.improved else ""))
            elif isinstance(e, Logged):
                self._log(e.message)
            elif isinstance(e, RunFailed):
                self.error, self.suggestion = e.message, e.suggestion
                self._log(f"Error: {e.message}")
            elif isinstance(e, RunEnded):
                self.result = e.result
                why = f" ({e.result.stop_reason})" if e.result.stop_reason else ""
                self._log(f"Run {e.result.status}{why}: best val acc {e.result.best_val_accuracy:.3f} after {e.result.seconds:.1f}s")

    def _log(self, message: str) -> None:
        self.log.append(f"{time.strftime('%H:%M:%S')}  {message}")


class JobManager:
    """Starts, stops and finds jobs. Thread-safe; at most one active job per device."""

    def __init__(self, runs_dir: str | Path | None = None):
        self._runs_dir = Path(runs_dir) if runs_dir else None
        self._jobs: list[Job] = []
        self._lock = threading.Lock()

    def start(self, dataset: DatasetSpec | str, config: TrainConfig, resume_dir: str | None = None) -> Job:
        config.validate()
        spec = dataset if isinstance(dataset, DatasetSpec) else DatasetSpec(dataset)
        device = str(pick_device(config.device))
        with self._lock:
            busy = self.active(device)
            if busy:
                raise JobBusy(f"A training job is already running on {device} (job {busy.id}, run "
                              f"{Path(busy.run_dir or '?').name}); stop it or wait for it to finish.")
            job = Job(len(self._jobs) + 1, spec, config, device)
            self._jobs.append(job)
        thread = threading.Thread(target=self._work, args=(job, resume_dir), name=f"tl-job-{job.id}", daemon=True)
        thread.start()
        return job

    def _work(self, job: Job, resume_dir: str | None) -> None:
        try:
            trainer = Trainer(job.config, [job.on_event], job.stop_event)
            result = trainer.resume(resume_dir) if resume_dir else trainer.fit(job.dataset, self.runs_dir)
            job.finish(JobStatus(result.status))
        except TrainingError as e:
            with job.lock:
                job.run_dir = job.run_dir or e.run_dir
            job.finish(JobStatus.FAILED, str(e), e.suggestion)
        except Exception as e:  # failures outside the trainer's own guard (a bad device)
            message, suggestion = explain(e, job.config)
            with job.lock:
                job._log(f"Error: {message}")
                job._log(traceback.format_exc(limit=3))
            job.finish(JobStatus.FAILED, message, suggestion)

    @property
    def runs_dir(self) -> Path:
        """Fixed when given, else read at each start (TL_STUDIO_RUNS may change while the server lives)."""
        return self._runs_dir or paths.runs_dir()

    def active(self, device: str | None = None) -> Job | None:
        return next((j for j in self._jobs if j.active and (device is None or j.device == device)), None)

    def current(self) -> Job | None:
        """The active job, else the most recent one (so a page shows how the last run ended)."""
        return self.active() or (self._jobs[-1] if self._jobs else None)

    def stop(self, job: Job | None = None) -> bool:
        job = job or self.active()
        if not job or not job.active:
            return False
        with job.lock:
            job.status = JobStatus.STOPPING
            job._log("Stop requested; finishing the current step.")
        job.stop_event.set()
        return True

    def wait(self, job: Job, timeout: float = 600) -> JobStatus:
        deadline = time.time() + timeout
        while job.active and time.time() < deadline:
            time.sleep(0.05)
        return job.status
