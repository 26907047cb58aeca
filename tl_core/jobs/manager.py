"""Training jobs as child processes: started, followed, stopped and re-attached by the dashboard.

A job is `python -m tl_core train ...` (or `torchrun ... -m tl_core train ...` on several GPUs) in its own
session, with a folder `$TL_STUDIO_HOME/jobs/<id>/`: job.json (pid, start time, device, command), events.jsonl
(every typed training event as a JSON line, written by the child) and output.log (its stdout and stderr). A
job's state is rebuilt by replaying its events, so a page that attaches late, or a new server process after a
restart, sees the curves so far; a child that is gone without a final event is shown as interrupted, and a
training crash never reaches the server. One job per device across processes: the child inherits an exclusive
`flock` on `$TL_STUDIO_HOME/locks/<device>.lock` and holds it for its whole life.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from tl_core import paths, plan
from tl_core.config import TrainConfig, to_arguments
from tl_core.data.sources import DatasetSpec
from tl_core.devices import pick_device
from tl_core.formats import loss, percent, seconds
from tl_core.train.events import (
    EpochEnded,
    EpochRow,
    Event,
    EventLog,
    Logged,
    PhaseProgress,
    PhaseStarted,
    RunEnded,
    RunFailed,
    RunResult,
    RunStarted,
    StepEnded,
)
from tl_core.train.runs import owner_alive, process_start, write_json

KILL_GRACE_S = 20.0  # after a stop request this long unanswered, the page offers Kill
KEEP_JOBS = 50  # job folders kept (newest first); runs themselves are never touched
ROOT = Path(__file__).resolve().parents[2]  # what the child needs on its PYTHONPATH to import tl_core


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


class JobBusy(RuntimeError):
    """A job already runs on this device (in this server or another process)."""


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
    pid: int = 0
    workers: int = 1
    stop_requested: float | None = None  # when Stop was pressed (time.time()), in this server

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

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


def usable_gpus() -> int:
    """CUDA GPUs a job could spread over (one torchrun worker each); 0 or 1 means no choice to offer."""
    import torch

    return torch.cuda.device_count()


def train_command(spec: DatasetSpec, config: TrainConfig, runs_dir: str | Path, events: str | Path, workers: int = 1,
                  resume_dir: str | None = None) -> list[str]:
    """The child's command line: `python -m tl_core train|resume ...`, through torchrun when `workers` > 1."""
    launcher = [sys.executable, "-m", "tl_core"] if workers <= 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}", "-m", "tl_core"]
    if resume_dir:
        what = ["resume", str(resume_dir), f"--epochs={config.epochs}"]
    else:
        source = str(Path(spec.source).resolve()) if Path(spec.source).exists() else spec.source
        what = ["train", source, f"--val-fraction={spec.val_fraction}", f"--split-seed={spec.split_seed}",
                *to_arguments(config), f"--runs-dir={Path(runs_dir).resolve()}"]
    return [*launcher, *what, f"--events={events}", "--json"]


def _running(pid: int, start: int | None) -> bool:
    """The job's process still runs: not gone, not reused by another process, not a zombie nobody reaped yet."""
    if not owner_alive(pid, start):
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS): trust the pid and its start time
        return True


def _tail(path: Path, lines: int = 15) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            return [line for line in f.read().decode(errors="replace").splitlines() if line.strip()][-lines:]
    except OSError:
        return []


@dataclass
class Job:
    """One job's state, rebuilt from its folder: the record, then its events replayed in order."""

    id: int
    dir: Path
    dataset: DatasetSpec
    config: TrainConfig
    device: str
    pid: int
    pid_start: int | None
    started: float
    workers: int = 1
    process: subprocess.Popen | None = field(default=None, repr=False)  # set only in the server that started it
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
    ended: float | None = None
    last_event: float | None = None
    stop_requested: float | None = None
    killed: bool = False
    offset: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, folder: Path) -> Job | None:
        """A job from its folder, or None while job.json is not written yet (or is not a job's)."""
        try:
            r = json.loads((folder / "job.json").read_text())
            return cls(int(r["id"]), folder, DatasetSpec(**r["dataset"]), TrainConfig.from_dict(r["config"]), r["device"],
                       int(r["pid"]), r.get("pid_start"), float(r["started"]), int(r.get("workers", 1)))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @property
    def events(self) -> EventLog:
        return EventLog(self.dir / "events.jsonl")

    @property
    def active(self) -> bool:
        self.refresh()
        return self.status in ACTIVE

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return _running(self.pid, self.pid_start)

    def refresh(self) -> None:
        """Apply the events written since the last look; once the process is gone, decide how the job ended."""
        with self.lock:
            if self.status not in ACTIVE:
                return
            alive = self.alive()  # before reading: every event of a dead process is on disk already
            events, self.offset = self.events.read(self.offset)
            for e in events:
                self._apply(e)
            if not alive:
                self._ended()

    def snapshot(self) -> JobSnapshot:
        """Safe from any thread; elapsed stops at the job's end."""
        self.refresh()
        with self.lock:
            active = self.status in ACTIVE
            return JobSnapshot(
                self.id, self.dataset, self.config, self.device, self.status,
                self.run_dir, self.phase, self.progress, self.phase_rate, self.epoch, self.epochs or self.config.epochs or 0, self.step,
                self.images_per_s, self.eta if active else None, (self.ended or time.time()) - self.started,
                tuple(self.history), tuple(self.step_losses), tuple(self.log), self.error, self.suggestion, self.result,
                self.pid, self.workers,
                self.stop_requested)

    def on_event(self, e: Event) -> None:
        with self.lock:
            self._apply(e)

    def _apply(self, e: Event) -> None:
        """Keep what the page draws; the status moves only forward (a terminal one is set when the process is gone)."""
        self.last_event = e.time
        if isinstance(e, RunStarted):
            self.run_dir, self.epochs = e.run_dir, e.epochs
            if self.status == JobStatus.STARTING:
                self.status = JobStatus.RUNNING
            self._log(e, f"Run {Path(e.run_dir).name} on {e.device} ({e.dtype})"
                      + (f"; {e.skipped} file(s) skipped, see the log" if e.skipped else ""))
        elif isinstance(e, PhaseStarted):
            self.phase, self.progress, self.phase_rate = e.phase, (0, 0), None
            self._log(e, e.message)
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
            self._log(e, f"Epoch {r.epoch}/{e.epochs}: train acc {percent(r.train_acc)}, val acc {percent(r.val_acc)}, "
                         f"val loss {loss(r.val_loss)}" + (" (best)" if e.improved else ""))
        elif isinstance(e, Logged):
            self._log(e, e.message)
        elif isinstance(e, RunFailed):
            self.error, self.suggestion = e.message, e.suggestion
            self.run_dir = self.run_dir or e.run_dir
            self._log(e, f"Error: {e.message}")
        elif isinstance(e, RunEnded):
            self.result = e.result
            why = f" ({e.result.stop_reason})" if e.result.stop_reason else ""
            self._log(e, f"Run {e.result.status}{why}: best val acc {percent(e.result.best_val_accuracy)} after "
                         f"{seconds(e.result.seconds)}")

    def _ended(self) -> None:
        """The process is gone: its final event says how it ended; without one, its exit says why."""
        code = self.process.returncode if self.process is not None else None
        self.ended, self.eta = self.last_event or time.time(), None
        if self.result:
            self.status = JobStatus(self.result.status)
        elif self.error:
            self.status = JobStatus.FAILED
        elif self.stop_requested and code == -signal.SIGTERM:  # stopped before it could listen: nothing to keep
            self.status = JobStatus.STOPPED
            self._log(None, "Stopped before training began.")
        elif self.killed:
            self._end(JobStatus.INTERRUPTED, "Killed after the stop request went unanswered; the run keeps its finished epochs.",
                      "Resume it to continue from its last finished epoch.")
        elif code is not None and code < 0:
            self._end(JobStatus.FAILED, f"The training process died (signal {-code}).",
                      "Its last output is in the log below; resume the run to continue from its last finished epoch.")
        elif code:
            said = next((line[7:] for line in reversed(_tail(self.dir / "output.log")) if line.startswith("error: ")), None)
            self._end(JobStatus.FAILED, said or f"The training process exited with code {code}.", "See the log below.")
        else:  # gone while this server was not watching (or restarting) and without a final word
            self._end(JobStatus.INTERRUPTED, f"The training process (pid {self.pid}) is gone and its run did not finish.",
                      "Resume it to continue from its last finished epoch.")

    def _end(self, status: JobStatus, error: str, suggestion: str) -> None:
        self.status, self.error, self.suggestion = status, error, suggestion
        self._log(None, f"Error: {error}")
        if status == JobStatus.FAILED:
            self.log.extend(f"    {line}" for line in _tail(self.dir / "output.log"))

    def _log(self, e: Event | None, message: str) -> None:
        """A log line stamped with the event's time (what the child did when), or now (what this server did)."""
        self.log.append(f"{time.strftime('%H:%M:%S', time.localtime(e.time if e else None))}  {message}")


class JobManager:
    """Starts, stops, kills and finds jobs; thread-safe. Any number of managers (servers) share one job folder."""

    def __init__(self, runs_dir: str | Path | None = None, home: str | Path | None = None):
        self._runs_dir = Path(runs_dir) if runs_dir else None
        self._home = Path(home) if home else None
        self._jobs: dict[int, Job] = {}
        self._lock = threading.Lock()

    @property
    def runs_dir(self) -> Path:
        """Fixed when given, else read at each start (TL_STUDIO_RUNS may change while the server lives)."""
        return self._runs_dir or paths.runs_dir()

    @property
    def jobs_dir(self) -> Path:
        return (self._home or paths.home()) / "jobs"

    def start(self, dataset: DatasetSpec | str, config: TrainConfig, resume_dir: str | None = None, workers: int = 1) -> Job:
        """Launch the child (JobBusy when its device is taken, by any process); returns at once."""
        plan.check(config)
        spec = dataset if isinstance(dataset, DatasetSpec) else DatasetSpec(dataset)
        try:
            device = str(pick_device(config.device))
        except RuntimeError as e:
            raise ValueError(str(e)) from None
        with self._lock:
            lock = self._take(device)
            try:
                return self._launch(lock, spec, config, device, resume_dir, workers)
            finally:
                os.close(lock)  # the child holds its own copy until it exits

    def _take(self, device: str) -> int:
        locks = self.jobs_dir.parent / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(locks / f"{device.replace(':', '-')}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            raise JobBusy(f"A training job is already running on {device}{self._describe(holder)}; "
                          "stop it or wait for it to finish.") from None
        return fd

    def _describe(self, folder: str) -> str:
        job = self._jobs.get(int(Path(folder).name)) if Path(folder).name.isdigit() else None
        job = job or (Job.load(Path(folder)) if folder else None)
        if job is None:
            return ""
        s = job.snapshot()
        return f" (job {s.id}, run {s.run_name or 'not created yet'}, process {s.pid})"

    def _launch(self, lock: int, spec: DatasetSpec, config: TrainConfig, device: str, resume_dir: str | None,
                workers: int) -> Job:
        folder = self._new_folder()
        os.ftruncate(lock, 0)
        os.pwrite(lock, str(folder).encode(), 0)  # who holds the device, for the next one's JobBusy
        command = train_command(spec, config, self.runs_dir, folder / "events.jsonl", workers, resume_dir)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "PYTHONUNBUFFERED": "1"}
        with open(folder / "output.log", "wb") as out:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True, pass_fds=(lock,))
        record = {"id": int(folder.name), "pid": process.pid, "pid_start": process_start(process.pid), "started": time.time(),
                  "device": device, "workers": workers, "command": command, "dataset": spec.to_dict(),
                  "config": config.to_dict(), "resume_dir": resume_dir}
        write_json(folder / "job.json", record)
        job = Job.load(folder)
        job.process = process
        self._jobs[job.id] = job
        return job

    def _new_folder(self) -> Path:
        """The next job id, taken atomically (mkdir) so two servers never share one; old finished jobs go."""
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        ids = sorted(int(d.name) for d in self.jobs_dir.iterdir() if d.name.isdigit())
        for old in ids[:-KEEP_JOBS]:
            if (job := self._jobs.get(old) or Job.load(self.jobs_dir / str(old))) is None or not job.active:
                self._jobs.pop(old, None)
                shutil.rmtree(self.jobs_dir / str(old), ignore_errors=True)
        n = ids[-1] + 1 if ids else 1
        while True:
            try:
                (self.jobs_dir / str(n)).mkdir()
                return self.jobs_dir / str(n)
            except FileExistsError:
                n += 1

    def jobs(self) -> list[Job]:
        """Every job in the folder, oldest first: this server's, and those of earlier or other server processes."""
        with self._lock:
            if self.jobs_dir.exists():
                for d in self.jobs_dir.iterdir():
                    if d.name.isdigit() and int(d.name) not in self._jobs and (job := Job.load(d)):
                        self._jobs[job.id] = job
            return [self._jobs[i] for i in sorted(self._jobs)]

    def active(self, device: str | None = None, jobs: list[Job] | None = None) -> Job | None:
        return next((j for j in jobs or self.jobs() if j.active and (device is None or j.device == device)), None)

    def current(self) -> Job | None:
        """The active job, else the most recent one (so a page shows how the last run ended), unless its run was
        deleted since: then there is nothing left to show or resume."""
        jobs = self.jobs()  # one look at the job folder for both questions
        last = jobs[-1] if jobs else None
        gone = last is not None and last.run_dir is not None and not Path(last.run_dir).exists()
        return self.active(jobs=jobs) or (None if gone else last)

    def stop(self, job: Job | None = None) -> bool:
        """Ask the child to stop (SIGTERM): it ends the run within a step, 'stopped', with its checkpoint."""
        job = job or self.active()
        if not job or not job.active:
            return False
        with job.lock:
            job.status, job.stop_requested = JobStatus.STOPPING, time.time()
            job._log(None, "Stop requested; finishing the current step.")
        return self._signal(job, signal.SIGTERM)

    def kill(self, job: Job) -> bool:
        """Kill the child's whole process group (torchrun's workers too); its run reads interrupted and resumable."""
        if not job.active:
            return False
        job.killed = True
        return self._signal(job, signal.SIGKILL)

    @staticmethod
    def _signal(job: Job, sig: signal.Signals) -> bool:
        if not job.alive():
            return False
        try:
            os.killpg(job.pid, sig)  # its own session: the group id is its pid
            return True
        except ProcessLookupError:
            return False

    def wait(self, job: Job, timeout: float = 600) -> JobStatus:
        deadline = time.time() + timeout
        while job.active and time.time() < deadline:
            time.sleep(0.1)
        return job.status
