"""Background training jobs owned by the server process: one per device, re-attachable from any tab.

The dashboard keeps one JobManager (st.cache_resource) and only reads snapshots; the worker thread never
touches Streamlit. Every event is also applied to the Job's own state, so a page that attaches late
(refresh, a second tab, another browser) sees the curves so far.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from tl_core import paths
from tl_core.config import TrainConfig
from tl_core.devices import pick_device
from tl_core.events import Event
from tl_core.trainer import Trainer, TrainingError, explain

ACTIVE = ("starting", "running", "stopping")


class JobBusy(RuntimeError):
    """A job already runs on this device."""


@dataclass
class Job:
    id: int
    source: str
    config: TrainConfig
    device: str
    status: str = "starting"  # starting | running | stopping | finished | stopped | failed
    run_dir: str | None = None
    phase: str = "starting"
    progress: tuple[int, int] = (0, 0)
    epoch: int = 0
    step: tuple[int, int] = (0, 0)
    images_per_s: float = 0.0
    eta: float | None = None
    history: list[dict] = field(default_factory=list)
    log: deque = field(default_factory=lambda: deque(maxlen=300))
    error: str | None = None
    suggestion: str | None = None
    result: dict | None = None
    started: float = field(default_factory=time.time)
    stop_event: threading.Event = field(default_factory=threading.Event, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def snapshot(self) -> dict:
        """A consistent copy for rendering; safe to call from any thread."""
        with self.lock:
            return {
                "id": self.id, "source": self.source, "config": self.config.to_dict(), "device": self.device,
                "status": self.status, "run_dir": self.run_dir, "phase": self.phase, "progress": self.progress,
                "epoch": self.epoch, "epochs": self.config.epochs, "step": self.step,
                "images_per_s": self.images_per_s, "eta": self.eta, "history": list(self.history),
                "log": list(self.log), "error": self.error, "suggestion": self.suggestion, "result": self.result,
                "elapsed": time.time() - self.started,
            }

    def on_event(self, e: Event) -> None:
        """The job's listener: keeps what the UI draws."""
        with self.lock:
            d = e.data
            if e.name == "run_start":
                self.run_dir, self.status = d["run_dir"], "running" if self.status == "starting" else self.status
                self._log(f"Run {Path(d['run_dir']).name} on {d['device']} ({d['dtype']})")
            elif e.name == "phase":
                self.phase = d["phase"]
                self._log(d["message"])
            elif e.name == "progress":
                self.phase, self.progress = d["phase"], (d["done"], d["total"])
            elif e.name == "step_end":
                self.epoch, self.step = d["epoch"], (d["step"], d["steps"])
                self.images_per_s, self.eta = d["images_per_s"], d["eta"]
            elif e.name == "epoch_end":
                self.history.append({k: v for k, v in d.items() if isinstance(v, (int, float, bool))})
                self.epoch = d["epoch"]
                self._log(f"Epoch {d['epoch']}/{d['epochs']}: train acc {d['train_acc']:.3f}, val acc "
                          f"{d['val_acc']:.3f}, val loss {d['val_loss']:.3f}" + (" (best)" if d["improved"] else ""))
            elif e.name == "log":
                self._log(d["message"])
            elif e.name == "run_error":
                self.error, self.suggestion = d["message"], d["suggestion"]
                self._log(f"Error: {d['message']}")
            elif e.name == "run_end":
                self.result = dict(d)
                self._log(f"Run {d['status']}: best val acc {d['best_val_accuracy']:.3f} after {d['seconds']:.1f}s")

    def _log(self, message: str) -> None:
        self.log.append(f"{time.strftime('%H:%M:%S')}  {message}")


class JobManager:
    """Starts, stops and finds jobs. Thread-safe; at most one active job per device."""

    def __init__(self, runs_dir: str | Path | None = None):
        self._runs_dir = Path(runs_dir) if runs_dir else None
        self._jobs: list[Job] = []
        self._lock = threading.Lock()

    def start(self, source: str, config: TrainConfig, resume_dir: str | None = None) -> Job:
        config.validate()
        device = str(pick_device(config.device))
        with self._lock:
            busy = self.active(device)
            if busy:
                raise JobBusy(f"A training job is already running on {device} (job {busy.id}, run "
                              f"{Path(busy.run_dir or '?').name}); stop it or wait for it to finish.")
            job = Job(len(self._jobs) + 1, source, config, device)
            self._jobs.append(job)
        thread = threading.Thread(target=self._work, args=(job, resume_dir), name=f"tl-job-{job.id}", daemon=True)
        thread.start()
        return job

    def _work(self, job: Job, resume_dir: str | None) -> None:
        trainer = None
        try:
            trainer = Trainer(job.config, [job.on_event], job.stop_event)
            result = trainer.resume(resume_dir) if resume_dir else trainer.fit(job.source, self.runs_dir)
            with job.lock:
                job.status = result.status
        except TrainingError as e:
            with job.lock:
                job.status, job.error, job.suggestion = "failed", str(e), e.suggestion
                job.run_dir = job.run_dir or e.run_dir
        except Exception as e:  # failures before the run exists (bad dataset path, bad device)
            message, suggestion = explain(e, job.config)
            with job.lock:
                job.status, job.error, job.suggestion = "failed", message, suggestion
                job._log(f"Error: {message}")
                job._log(traceback.format_exc(limit=3))

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
            job.status = "stopping"
            job._log("Stop requested; finishing the current step.")
        job.stop_event.set()
        return True

    def wait(self, job: Job, timeout: float = 600) -> str:
        deadline = time.time() + timeout
        while job.active and time.time() < deadline:
            time.sleep(0.05)
        return job.status
