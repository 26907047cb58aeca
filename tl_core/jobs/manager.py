"""Training jobs as child processes: started, followed, stopped and re-attached by the dashboard.

A job is `python -m tl_core train ...` (or `torchrun ... -m tl_core train ...` on several GPUs) in its own
process group (started with setsid), with a folder `$TL_STUDIO_HOME/jobs/<id>/`: job.json (pid, start time, device, command), events.jsonl
(every typed training event as a JSON line, written by the child) and output.log (its stdout and stderr). A
job's state is one immutable snapshot, rebuilt by folding its events with `tl_core.jobs.state.reduce`, so a
page that attaches late, or a new server process after a restart, sees the curves so far; a child that is gone
without a final event is shown as interrupted, and a training crash never reaches the server. One job per device
across processes: the child inherits an exclusive `flock` on `$TL_STUDIO_HOME/locks/<device>.lock` and holds it
for its whole life.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tl_core import paths, plan
from tl_core.config import TrainConfig, to_arguments
from tl_core.data.sources import DatasetSpec
from tl_core.devices import pick_device
from tl_core.jobs.state import JobSnapshot, JobStatus, ProcessEnded, StopRequested, reduce
from tl_core.paths import write_json
from tl_core.train.events import Event, EventLog
from tl_core.train.runs import owner_alive, process_start

KEEP_JOBS = 50  # job folders kept (newest first); runs themselves are never touched
ROOT = Path(__file__).resolve().parents[2]  # what the child needs on its PYTHONPATH to import tl_core


class JobBusy(RuntimeError):
    """A job already runs on this device (in this server or another process)."""


def usable_gpus() -> int:
    """CUDA GPUs a job could spread over (one torchrun worker each); 0 or 1 means no choice to offer."""
    import torch

    return torch.cuda.device_count()


def child_environment() -> dict[str, str]:
    """The training child's environment: this server's, without the dashboard's secrets (the password and
    Streamlit's own settings, its cookie secret among them): a child needs none of them, and a crash report or a
    `ps e` would show them."""
    from tl_core.dashboard.auth import PASSWORD_ENV

    env = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV and not k.startswith("STREAMLIT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def train_command(spec: DatasetSpec, config: TrainConfig, runs_dir: str | Path, events: str | Path, workers: int = 1,
                  resume_dir: str | None = None) -> list[str]:
    """The child's command line: `python -m tl_core train|resume ...`, through torchrun when `workers` > 1."""
    launcher = [sys.executable, "-m", "tl_core"] if workers <= 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}", "-m", "tl_core"]
    if resume_dir:
        what = ["resume", str(resume_dir), f"--epochs={config.epochs}"]
    else:
        source = str(Path(spec.source).resolve()) if Path(spec.source).exists() else spec.source
        what = ["train", source, *spec.to_arguments(), *to_arguments(config), f"--runs-dir={Path(runs_dir).resolve()}"]
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
    """One job: its folder, its process, and its state, one JobSnapshot that `reduce` replaces as events arrive
    (rebuilt from the folder by replaying the events in order)."""

    dir: Path
    state: JobSnapshot
    pid_start: int | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)  # set only in the server that started it
    killed: bool = False  # this server killed it
    offset: int = 0  # bytes of events.jsonl applied so far
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, folder: Path) -> Job | None:
        """A job from its folder, or None while job.json is not written yet (or is not a job's)."""
        try:
            r = json.loads((folder / "job.json").read_text())
            state = JobSnapshot.new(int(r["id"]), DatasetSpec(**r["dataset"]), TrainConfig.from_dict(r["config"]), r["device"],
                                    float(r["started"]), int(r["pid"]), int(r.get("workers", 1)))
            return cls(folder, state, r.get("pid_start"))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @property
    def events(self) -> EventLog:
        return EventLog(self.dir / "events.jsonl")

    @property
    def active(self) -> bool:
        return self.snapshot().active

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return _running(self.state.pid, self.pid_start)

    def refresh(self) -> None:
        """Apply the events written since the last look; once the process is gone, the end it came to."""
        with self.lock:
            if not self.state.active:
                return
            alive = self.alive()  # before reading: every event of a dead process is on disk already
            events, self.offset = self.events.read(self.offset)
            if not alive:
                code = self.process.returncode if self.process is not None else None
                events.append(ProcessEnded(code, self.killed, tuple(_tail(self.dir / "output.log"))))
            self.state = functools.reduce(reduce, events, self.state)

    def apply(self, event: Event) -> None:
        """One event from this server (a stop request), folded in like the child's."""
        with self.lock:
            self.state = reduce(self.state, event)

    def snapshot(self) -> JobSnapshot:
        """The state now, safe from any thread: one immutable value."""
        self.refresh()
        return self.state


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
        with open(folder / "output.log", "wb") as out:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=child_environment(),
                                       start_new_session=True, pass_fds=(lock,))
        record = {"id": int(folder.name), "pid": process.pid, "pid_start": process_start(process.pid), "started": time.time(),
                  "device": device, "workers": workers, "command": command, "dataset": spec.to_dict(),
                  "config": config.to_dict(), "resume_dir": resume_dir}
        write_json(folder / "job.json", record)
        job = Job.load(folder)
        job.process = process
        self._jobs[job.state.id] = job
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
                        self._jobs[job.state.id] = job
            return [self._jobs[i] for i in sorted(self._jobs)]

    def active(self, device: str | None = None, jobs: list[Job] | None = None) -> Job | None:
        return next((j for j in jobs or self.jobs() if j.active and (device is None or j.state.device == device)), None)

    def current(self) -> Job | None:
        """The active job, else the most recent one (so a page shows how the last run ended), unless its run was
        deleted since: then there is nothing left to show or resume."""
        jobs = self.jobs()  # one look at the job folder for both questions
        last = jobs[-1] if jobs else None
        gone = last is not None and last.state.run_dir is not None and not Path(last.state.run_dir).exists()
        return self.active(jobs=jobs) or (None if gone else last)

    def stop(self, job: Job | None = None) -> bool:
        """Ask the child to stop (SIGTERM): it ends the run within a step, 'stopped', with its checkpoint."""
        job = job or self.active()
        if not job or not job.active:
            return False
        job.apply(StopRequested())
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
            os.killpg(job.state.pid, sig)  # started with setsid: the group id is its pid
            return True
        except ProcessLookupError:
            return False

    def wait(self, job: Job, timeout: float = 600) -> JobStatus:
        deadline = time.time() + timeout
        while job.active and time.time() < deadline:
            time.sleep(0.1)
        return job.snapshot().status
