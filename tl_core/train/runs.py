"""Runs on disk (`runs/<id>/`): everything needed to resume, predict or audit, written so a crash loses nothing.

Files: run.json (config, classes, preprocessing), split.json (exact images per split), metrics.jsonl
(one line per epoch, flushed), summary.json (status and best figures, replaced atomically),
best/last.safetensors (+ backbone.safetensors when only the head trains), trainer_state.pt for resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import secrets
import shutil
import time
import warnings
import zipfile
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt
from tl_core.data import targets
from tl_core.data.targets import Targets
from tl_core.formats import percent
from tl_core.paths import write_json


class RunStatus(StrEnum):
    """A run's state on disk; the job states add STARTING and STOPPING (tl_core.jobs.state.JobStatus)."""

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
CHECKED = "checked.json"  # the best checkpoint's validation accuracy as the predictor measures it
LOCK = "writer.lock"


class RunBroken(ValueError):
    """A run whose own files cannot be read; the message names the file and what to do."""


class RunBusy(RuntimeError):
    """Another live process is writing this run."""


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


@dataclass(frozen=True)
class ResumePoint:
    """Where an interrupted run continues: after `epoch`, with the best so far; the optimiser and scheduler state
    when `trainer_state.pt` was readable, else None (the trainer starts them afresh on the last weights)."""

    epoch: int
    best_acc: float
    best_epoch: int
    optimizer: dict | None = None
    scheduler: dict | None = None


def resume_point(run: Run) -> ResumePoint | None:
    """None when no epoch finished (no `last.safetensors`): the run starts over. An unreadable trainer state does
    not throw finished epochs away: the epoch count and the best come from metrics.jsonl, which every finished epoch
    appended, so the next epoch is numbered after them and the best checkpoint is only replaced by a better one."""
    if not (run.dir / "last.safetensors").exists():
        return None
    state = load_trainer_state(run.dir)
    try:
        return ResumePoint(int(state["epoch"]), float(state["best_acc"]), int(state["best_epoch"]),
                           dict(state["optimizer"]), dict(state["scheduler"]))
    except (TypeError, KeyError, ValueError):  # missing, unreadable, or not a trainer state
        pass
    rows = [r for r in run.metrics() if isinstance(r.get("epoch"), int) and isinstance(r.get("val_acc"), int | float)]
    if not rows:
        return None
    best = max(rows, key=lambda r: (r["val_acc"], -r["epoch"]))  # the first epoch that reached the best, as training kept it
    return ResumePoint(max(r["epoch"] for r in rows), float(best["val_acc"]), best["epoch"])


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


def _lock(fd: int) -> bool:
    """Take the OS lock on an open file without waiting; False when another open file holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # Windows
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError:
        return False


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def writer_active(run_dir: str | Path) -> bool:
    """Whether some process holds the run's writer lock now, wherever it runs (see `RunLock`)."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDWR)
    except OSError:
        return False  # no lock file: nobody writes
    try:
        if not _lock(fd):
            return True
        _unlock(fd)
        return False
    finally:
        os.close(fd)


class RunLock:
    """One writer per run: an OS file lock (flock) on `writer.lock`, held while the run is written.

    The kernel releases it when the writer dies, however it dies, and it does not depend on seeing the writer's
    process: a writer in another PID namespace (a container sharing the runs folder) or on another machine (a shared
    `--runs-dir` on a file system with working locks, such as NFSv4) holds it just the same. The file's content
    (pid + start time) only names the writer in the refusal.
    """

    TRIES = 5  # a reader asking `writer_active` holds the lock for microseconds: look again before refusing

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        for _ in range(self.TRIES):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if _lock(fd) and self._still_the_file(fd):
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps(_me()).encode())
                self.fd = fd
                return self
            os.close(fd)
            time.sleep(0.02)
        owner = self._owner() or {}
        raise RunBusy(f"Run {self.path.parent.name} is being written by process {owner.get('pid', '(unknown)')}; "
                      "stop that job first or wait for it to finish.")

    def _still_the_file(self, fd: int) -> bool:
        """The locked file is still the one at the path (a releasing writer deletes it: then lock the new one)."""
        try:
            if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                return True
        except FileNotFoundError:
            pass
        _unlock(fd)
        return False

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):  # Windows keeps an open file: then it stays, unlocked
            self.path.unlink(missing_ok=True)  # while still held, so nobody locks a file about to vanish
        _unlock(self.fd)
        os.close(self.fd)
        self.fd = None

    def _owner(self) -> dict | None:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # unreadable: a writer killed between create and write
        return owner if isinstance(owner, dict) else None


NUMBER = (int, float)
SUMMARY_TYPES: dict[str, type | tuple[type, ...]] = {
    "status": str, "best_val_accuracy": NUMBER, "best_epoch": int, "epochs_completed": int, "seconds": NUMBER,
    "images_per_s": NUMBER, "error": str, "suggestion": str, "stop_reason": str, "skipped": list,
    "best_val_balanced_accuracy": NUMBER, "best_val_recall": dict}
CONFIG_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": NUMBER, "bool": (bool,), "str": (str,)}


def _wrong_type(value, kinds: type | tuple[type, ...]) -> bool:
    """JSON's true/false are ints to Python: only a bool field takes them."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)


def _summary_problem(summary: dict) -> str | None:
    """The first field of summary.json with a type the pages and the CLI cannot show, or None."""
    for name, kinds in SUMMARY_TYPES.items():
        value = summary.get(name)
        if value is not None and _wrong_type(value, kinds):
            return f"{name} is {json.dumps(value)}"
    if summary.get("status") not in (None, *RunStatus):
        return f"status is {json.dumps(summary['status'])}"
    return None


def _info_problem(info: dict) -> str | None:
    """What in run.json would crash a reader: a setting of the wrong type or out of range, a class that is not a
    name, a dataset that is not a description."""
    from tl_core.config import TrainConfig

    config = info["config"]
    for f in fields(TrainConfig):
        value, declared = config.get(f.name), str(f.type)
        if value is None or declared.replace(" | None", "") not in CONFIG_TYPES:
            continue
        if _wrong_type(value, CONFIG_TYPES[declared.replace(" | None", "")]):
            return f"config.{f.name} is {json.dumps(value)}"
    try:
        TrainConfig.from_dict(config).validate()
    except (TypeError, ValueError) as e:
        return str(e)
    if not all(isinstance(c, str) for c in info["classes"]):
        return "classes must be names"
    if not isinstance(info.get("dataset", {}), dict):
        return "dataset is not a description"
    return None
@dataclass(frozen=True)
class RunAccuracy:
    """A run's one accuracy figure and what it is. Training measures validation on its own fast path (embeddings
    cached in bf16, BatchNorm folded); `evaluate` and the Predict page run the predictor, which can differ on a
    borderline image. Once the predictor has measured the best checkpoint, that figure is the run's everywhere."""

    value: float | None
    epoch: int | None  # the best checkpoint's epoch
    checked: bool  # measured by the predictor (what `evaluate` reports), not while training
    split: str = "val"
    name: str = "accuracy"  # or "exact-set accuracy" (a multi-label run)

    def label(self) -> str:
        """95.4% on val, best checkpoint (epoch 3): the same words wherever a run's accuracy is shown."""
        kind = "" if self.name == "accuracy" else f" {self.name}"
        return (f"{percent(self.value)}{kind} on {self.split}, best checkpoint" + (f" (epoch {self.epoch})" if self.epoch else "")
                + ("" if self.checked else ", measured while training"))


def record_checked_accuracy(run: Run, accuracy: float, checkpoint: float) -> None:
    """Keep the predictor's validation accuracy of the best checkpoint (`checkpoint`: its mtime)."""
    write_json(run.dir / CHECKED, {"split": "val", "checkpoint": checkpoint, "accuracy": accuracy})


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
        if problem := _info_problem(info):
            raise RunBroken(f"{path}: {problem}; delete the run or restore the file.")
        return info

    @property
    def broken(self) -> str | None:
        """Why this run cannot be used (for a page or `runs` to show), or None when it can."""
        try:
            _ = self.info
        except RunBroken as e:
            return str(e)
        if problem := _summary_problem(self._summary_file()):
            return f"{self.dir / 'summary.json'}: {problem}; delete the run or restore the file."
        return None

    def _summary_file(self) -> dict:
        try:
            s = json.loads((self.dir / "summary.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return s if isinstance(s, dict) else {}

    @property
    def summary(self) -> dict:
        """summary.json as typed figures; {"status": "broken"} when a field has the wrong type, {"status":
        "interrupted"} when there is none (killed before writing it)."""
        s = self._summary_file()
        if not s:
            return {"status": INTERRUPTED}
        if _summary_problem(s):
            return {"status": BROKEN}
        if s.get("status") == RUNNING and not writer_active(self.dir):  # the writer holds the lock while it runs
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

    def split(self, name: str) -> list[tuple[str, int | tuple[int, ...]]]:
        """(path, class) per picture of one split; a multi-label run's pictures have their label set as a tuple."""
        rows = json.loads((self.dir / "split.json").read_text()).get(name, [])
        return [(path, tuple(label) if isinstance(label, list) else label) for path, label in rows]

    @property
    def multi_label(self) -> bool:
        return bool(self.info.get("multi_label", False))

    @property
    def targets(self) -> Targets:
        return targets.of(self.multi_label)

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

    def accuracy(self) -> RunAccuracy:
        """The validation accuracy of the best checkpoint: the predictor's when it has measured this checkpoint,
        else the training figure (labelled so)."""
        s = self.summary
        try:
            checked = json.loads((self.dir / CHECKED).read_text())
            if checked["checkpoint"] == (self.dir / "best.safetensors").stat().st_mtime:
                return RunAccuracy(float(checked["accuracy"]), s.get("best_epoch"), True, name=self.targets.accuracy_name)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return RunAccuracy(s.get("best_val_accuracy"), s.get("best_epoch"), False, name=self.targets.accuracy_name)

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
        s, cfg, acc = r.summary, r.info.get("config", {}), r.accuracy()
        lr = cfg.get("lr")
        rows.append({"run": r.id, "status": s.get("status"), "why": s.get("stop_reason") or s.get("error") or "",
                     "best val acc": acc.value, "measured": "by the predictor" if acc.checked else "while training",
                     "balanced acc": s.get("best_val_balanced_accuracy"),
                     "epochs": s.get("epochs_completed"),
                     "backbone": cfg.get("backbone"), "strategy": cfg.get("strategy"),
                     "lr": "automatic" if lr is None else f"{lr:g}",
                     "batch": cfg.get("batch_size"), "dataset": r.info.get("dataset", {}).get("name"),
                     "seconds": round(s.get("seconds") or 0, 1)})
    return rows
