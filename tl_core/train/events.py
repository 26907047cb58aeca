"""Typed training events (one dataclass each); the terminal, the run folder and the dashboard are listeners.

A listener is any callable taking an event; it matches on the event's class. A listener that raises is logged
and never stops training (a closed browser tab must not kill a run). `EventLog` writes them as JSON lines
(`to_json`/`from_json` round-trip every class exactly), so a training child process can be followed from
another process, and followed again after that process restarts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

from tl_core.data.sources import Problem

log = logging.getLogger("tl_core")


@dataclass(frozen=True)
class EpochRow:
    """One finished epoch, as written to metrics.jsonl and drawn on the curves."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    images_per_s: float | None  # training images per second over this epoch; None for a fitted head (no steps to time)
    epoch_seconds: float
    seconds: float = 0.0  # run time so far
    best_val_acc: float = 0.0
    best_epoch: int = 0
    val_balanced_acc: float | None = None  # mean per-class recall: accuracy as if every class were equally common
    val_recall: list[float | None] | None = None  # per class, in the run's class order (None: no image of it in val)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunResult:
    run_dir: str
    status: str
    best_val_accuracy: float
    best_epoch: int
    epochs_completed: int
    seconds: float
    images_per_s: float | None  # training images per second; None for a fitted head, which has no training steps
    skipped: int
    stop_reason: str | None = None  # "early-stopped at epoch 6 (patience 5)", "stopped by request", ...
    best_val_balanced_accuracy: float | None = None  # the best checkpoint's mean per-class recall

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Event:
    time: float = field(default_factory=time.time, kw_only=True)


@dataclass(frozen=True)
class RunStarted(Event):
    run_dir: str
    classes: list[str]
    device: str
    dtype: str
    epochs: int
    resume: bool
    skipped: int  # files the scan left out (listed in the run's summary with their reasons)


@dataclass(frozen=True)
class PhaseStarted(Event):
    phase: str  # weights | decoding | embedding | fitting | training
    message: str


@dataclass(frozen=True)
class PhaseProgress(Event):
    phase: str
    done: int
    total: int
    rate: float | None = None  # items per second in this phase (e.g. images embedded per second)
    eta: float | None = None  # seconds left in the whole run, when known


@dataclass(frozen=True)
class StepEnded(Event):
    epoch: int
    step: int
    steps: int
    loss: float
    lr: float
    images_per_s: float | None  # training images per second since the training phase began; None for a fitted head
    eta: float | None  # seconds left in the run


@dataclass(frozen=True)
class EpochEnded(Event):
    row: EpochRow
    epochs: int
    improved: bool


@dataclass(frozen=True)
class Logged(Event):
    message: str


@dataclass(frozen=True)
class RunEnded(Event):
    result: RunResult
    skipped: tuple[Problem, ...] = ()  # the Problems (path, reason) of files left out, in the scan's wording


@dataclass(frozen=True)
class RunFailed(Event):
    message: str
    suggestion: str
    run_dir: str | None


Listener = Callable[[Event], None]


class Emitter:
    def __init__(self, listeners: Iterable[Listener] = ()):
        self.listeners = list(listeners)

    def emit(self, event: Event) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a broken listener (a closed browser tab) never stops training
                log.exception("listener failed on %s", type(event).__name__)


# ---------------------------------------------------------------- JSON lines

EVENT_TYPES: dict[str, type[Event]] = {c.__name__: c for c in (RunStarted, PhaseStarted, PhaseProgress, StepEnded, EpochEnded,
                                                                Logged, RunEnded, RunFailed)}
NESTED: dict[str, type] = {"row": EpochRow, "result": RunResult}  # fields holding a dataclass, by name


def to_json(e: Event) -> str:
    """One line: {"type": class name, ...fields}; nested rows and results as objects, problems as [path, reason]."""
    d = {f.name: getattr(e, f.name) for f in fields(e)}
    d = {k: asdict(v) if is_dataclass(v) else v for k, v in d.items()}
    if isinstance(e, RunEnded):
        d["skipped"] = [[p.path, p.reason] for p in e.skipped]
    return json.dumps({"type": type(e).__name__, **d})


def from_json(line: str) -> Event:
    """The exact event `to_json` wrote (ValueError for anything else)."""
    d = json.loads(line)
    cls = EVENT_TYPES.get(d.pop("type", None) if isinstance(d, dict) else None)
    if cls is None:
        raise ValueError(f"not a training event: {line[:80]!r}")
    for name, nested in NESTED.items():
        if name in d:
            d[name] = nested(**d[name])
    if cls is RunEnded:
        d["skipped"] = tuple(Problem(*p) for p in d.get("skipped", ()))
    return cls(**d)


class EventLog:
    """An append-only JSON-lines file of events: the writer is a listener, the reader follows it by byte offset."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __call__(self, e: Event) -> None:
        with open(self.path, "a") as f:  # one write per line, flushed on close: a reader never sees half of one...
            f.write(to_json(e) + "\n")

    def read(self, offset: int = 0) -> tuple[list[Event], int]:
        """The events after `offset` and the offset after the last complete line (...and ignores one that is)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return [], offset
        complete = data[: data.rfind(b"\n") + 1]
        events = []
        for line in complete.decode(errors="replace").splitlines():
            try:
                events.append(from_json(line))
            except (ValueError, TypeError):  # a line cut by a killed writer, then continued: skip it
                log.warning("unreadable event line in %s", self.path)
        return events, offset + len(complete)
