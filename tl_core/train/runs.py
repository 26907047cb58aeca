"""Runs on disk (`runs/<id>/`): everything needed to resume, predict or audit, written so a crash loses nothing.

Files: run.json (config, classes, preprocessing), split.json (exact images per split), metrics.jsonl
(one line per epoch, flushed), summary.json (status and best figures, replaced atomically),
best/last.safetensors (+ backbone.safetensors when only the head trains), trainer_state.pt for resume.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import shutil
import time
import warnings
import zipfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file


class RunStatus(StrEnum):
    """A run's state on disk; the job states add STARTING and STOPPING (tl_core.jobs.manager.JobStatus)."""

    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    BROKEN = "broken"  # its own files cannot be read (a corrupt run.json)


FINISHED, STOPPED, FAILED, RUNNING, INTERRUPTED = (RunStatus.FINISHED, RunStatus.STOPPED, RunStatus.FAILED, RunStatus.RUNNING,
                                                   RunStatus.INTERRUPTED)
BROKEN = RunStatus.BROKEN
TRAINER_STATE = "trainer_state.pt"
LOCK = "writer.lock"


class RunBroken(ValueError):
    """A run whose own files cannot be read; the message names the file and what to do."""


class RunBusy(RuntimeError):
    """Another live process is writing this run."""


def write_json(path: Path, data) -> None:
    """Atomic: a reader (the dashboard) never sees half a file, a crash never leaves one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def save_state(path: Path, state: dict[str, torch.Tensor], classes: list[str] | None = None) -> None:
    """Atomic; `classes` go into the file's metadata so a reordered run.json cannot silently swap labels."""
    tmp = path.with_name(f".{path.name}.tmp")
    metadata = {"classes": json.dumps(classes)} if classes is not None else None
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, tmp, metadata=metadata)
    os.replace(tmp, path)


def load_state(path: Path, classes: list[str] | None = None) -> dict[str, torch.Tensor]:
    """A safetensors file, or one RunBroken line naming it; refuses a file trained for other classes."""
    try:
        with safe_open(path, "pt") as f:
            stored = (f.metadata() or {}).get("classes")
        state = load_file(path)
    except (SafetensorError, OSError) as e:
        raise RunBroken(f"{path} is not a readable safetensors file ({e}).") from None
    if classes is not None and stored is not None and (trained := json.loads(stored)) != classes:
        i = next((i for i, (a, b) in enumerate(zip(trained, classes)) if a != b), min(len(trained), len(classes)))
        label = lambda names: repr(names[i]) if i < len(names) else "nothing"
        raise RunBroken(f"{path} does not match run.json: output {i} is {label(trained)} in the weights but "
                        f"{label(classes)} in run.json ({len(trained)} vs {len(classes)} classes); restore run.json.")
    return state


def save_trainer_state(run_dir: str | Path, state: dict) -> None:
    """Optimiser and scheduler for resume, written atomically: a kill mid-write leaves the previous file."""
    path = Path(run_dir) / TRAINER_STATE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_trainer_state(run_dir: str | Path) -> dict | None:
    """The saved optimiser state, or None when it is missing, empty, cut short or not plain tensors.

    Never unpickles: a file that needs more than weights_only=True is treated as absent.
    """
    path = Path(run_dir) / TRAINER_STATE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, weights_only=True, map_location="cpu")
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile):
        return None
    return state if isinstance(state, dict) else None


def process_start(pid: int) -> int | None:
    """When a process started (clock ticks since boot, /proc/<pid>/stat field 22); None without /proc."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):  # no /proc (macOS), or a process gone mid-read
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def owner_alive(pid: int, start: int | None) -> bool:
    """The process that wrote `pid` + `start` still runs: a pid reused by another process does not count."""
    if not isinstance(pid, int) or pid <= 0 or not _alive(pid):
        return False
    now = process_start(pid)
    return start is None or now is None or now == start


def _me() -> dict:
    return {"pid": os.getpid(), "pid_start": process_start(os.getpid())}


class RunLock:
    """One writer per run: a lock file holding pid + start time; a dead or reused owner's lock is taken over."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK

    def __enter__(self) -> RunLock:
        mine = self.path.with_name(f".{LOCK}.{os.getpid()}.{secrets.token_hex(4)}")
        mine.write_text(json.dumps(_me()))  # complete before it is visible: readers never see half a lock
        try:
            for _ in range(3):
                try:
                    os.link(mine, self.path)
                    return self
                except FileExistsError:
                    owner = self._owner()
                    if owner and owner_alive(owner.get("pid", -1), owner.get("pid_start")):
                        raise RunBusy(f"Run {self.path.parent.name} is being written by process {owner['pid']}; "
                                      "stop that job first or wait for it to finish.") from None
                    self.path.unlink(missing_ok=True)  # its owner is gone
            raise RunBusy(f"Run {self.path.parent.name} is being taken by another process at the same time.")
        finally:
            mine.unlink()

    def __exit__(self, *exc) -> None:
        if self._owner() == _me():
            self.path.unlink(missing_ok=True)

    def _owner(self) -> dict | None:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # unreadable: a writer killed between create and write
        return owner if isinstance(owner, dict) else None


@dataclass
class Run:
    dir: Path

    @property
    def id(self) -> str:
        return self.dir.name

    @property
    def info(self) -> dict:
        """run.json, or RunBroken naming the file when it is unreadable or not a run's description."""
        path = self.dir / "run.json"
        try:
            info = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RunBroken(f"{path} is unreadable ({type(e).__name__}: {e}); delete the run or restore the file.") from None
        if not (isinstance(info, dict) and isinstance(info.get("config"), dict) and isinstance(info.get("classes"), list)):
            raise RunBroken(f"{path} is not a TL Studio run description; delete the run or restore the file.")
        return info

    @property
    def broken(self) -> str | None:
        """Why this run cannot be used (for a page or `runs` to show), or None when it can."""
        try:
            _ = self.info
        except RunBroken as e:
            return str(e)
        return None

    @property
    def summary(self) -> dict:
        try:
            s = json.loads((self.dir / "summary.json").read_text())
        except (OSError, json.JSONDecodeError):
            return {"status": INTERRUPTED}
        if not isinstance(s, dict):
            return {"status": INTERRUPTED}
        if s.get("status") == RUNNING and not owner_alive(s.get("pid", -1), s.get("pid_start")):
            s["status"] = INTERRUPTED
        return s

    @property
    def classes(self) -> list[str]:
        return self.info["classes"]

    @property
    def dataset_source(self) -> str | None:
        """The DatasetSpec source this run trained on (None: not recorded)."""
        dataset = self.info.get("dataset")
        return dataset.get("source") if isinstance(dataset, dict) else None

    @property
    def started(self) -> str:
        """When it started, from the run id's timestamp: '2026-12-03 09:14'."""
        stamp = self.id[:15]
        return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]}" if stamp[8:9] == "-" else self.id

    def metrics(self) -> list[dict]:
        path = self.dir / "metrics.jsonl"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash
                pass
        return rows

    def split(self, name: str) -> list[tuple[str, int]]:
        return [tuple(x) for x in json.loads((self.dir / "split.json").read_text()).get(name, [])]

    def model_state(self, which: str = "best") -> dict[str, torch.Tensor]:
        """Full state dict: the frozen backbone file (if any) overlaid with the checkpoint."""
        state: dict[str, torch.Tensor] = {}
        if (self.dir / "backbone.safetensors").exists():
            state.update(load_state(self.dir / "backbone.safetensors"))
        ckpt = self.dir / f"{which}.safetensors"
        if not ckpt.exists():
            raise FileNotFoundError(f"Run {self.id} has no {which} checkpoint yet (no epoch finished).")
        state.update(load_state(ckpt, self.classes))
        return state

    def has_checkpoint(self) -> bool:
        return (self.dir / "best.safetensors").exists()

    # -- writing

    def append_metrics(self, row: dict) -> None:
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_summary(self, **fields) -> None:
        try:
            current = json.loads((self.dir / "summary.json").read_text())
        except (OSError, json.JSONDecodeError):  # none yet, or cut by a crash: start again
            current = {}
        current.update(fields, **_me(), updated=time.time())
        write_json(self.dir / "summary.json", current)


def new_run(runs_dir: str | Path, backbone: str) -> Run:
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{backbone}-{secrets.token_hex(2)}"
    path = runs_dir / run_id
    path.mkdir()
    return Run(path)


def list_runs(runs_dir: str | Path) -> list[Run]:
    """Newest first; folders without run.json (not ours) are ignored; a broken one is listed (see `Run.broken`)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.exists():
        return []
    return sorted((Run(d) for d in runs_dir.iterdir() if (d / "run.json").exists()), key=lambda r: r.id, reverse=True)


def latest_finished(runs_dir: str | Path, source: str | None = None) -> Run | None:
    """The newest usable run, of the dataset `source` when given (a DatasetSpec's source)."""
    return next((r for r in list_runs(runs_dir) if r.has_checkpoint() and not r.broken and r.summary.get("status") != RUNNING
                 and (source is None or same_source(r.dataset_source, source))), None)


def same_source(a: str | None, b: str) -> bool:
    """One dataset under two spellings: a job's command line resolves folders, a page may not."""
    if a is None:
        return False
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def load_run(path: str | Path) -> Run:
    path = Path(path)
    if not (path / "run.json").exists():
        raise FileNotFoundError(f"{path} is not a TL Studio run (no run.json).")
    return Run(path)


def delete_run(run: Run) -> None:
    if run.summary.get("status") == RUNNING:
        raise RuntimeError(f"Run {run.id} is still training; stop it first.")
    shutil.rmtree(run.dir)


def history_rows(runs: list[Run]) -> list[dict]:
    """The run-history table (Train page, `runs`): one row a run, the same columns everywhere."""
    rows = []
    for r in runs:
        if r.broken:
            rows.append({"run": r.id, "status": BROKEN, "why": r.broken})
            continue
        s, cfg = r.summary, r.info.get("config", {})
        lr = cfg.get("lr")
        rows.append({"run": r.id, "status": s.get("status"), "why": s.get("stop_reason") or s.get("error") or "",
                     "best val acc": s.get("best_val_accuracy"), "epochs": s.get("epochs_completed"),
                     "backbone": cfg.get("backbone"), "strategy": cfg.get("strategy"),
                     "lr": "automatic" if lr is None else f"{lr:g}",
                     "batch": cfg.get("batch_size"), "dataset": r.info.get("dataset", {}).get("name"),
                     "seconds": round(s.get("seconds") or 0, 1)})
    return rows
