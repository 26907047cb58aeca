"""Typed training events (one dataclass each); the terminal, the run folder and the dashboard are listeners.

A listener is any callable taking an event; it matches on the event's class. A listener that raises is logged
and never stops training (a closed browser tab must not kill a run).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

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
    images_per_s: float  # training images per second over this epoch (never an embedding rate)
    epoch_seconds: float
    seconds: float = 0.0  # run time so far
    best_val_acc: float = 0.0
    best_epoch: int = 0

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
    images_per_s: float
    skipped: int
    stop_reason: str | None = None  # "early-stopped at epoch 6 (patience 5)", "stopped by request", ...

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
    images_per_s: float  # training images per second since the training phase began
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
    skipped: tuple = ()  # the Problems (path, reason) of files left out, in the scan's wording


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
