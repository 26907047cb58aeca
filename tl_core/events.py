"""Training emits named events (Ultralytics style); the terminal, the run folder and the UI are listeners."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

EVENTS = ("run_start", "phase", "progress", "step_end", "epoch_end", "log", "run_end", "run_error")

log = logging.getLogger("tl_core")


@dataclass(frozen=True)
class Event:
    name: str
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


Listener = Callable[[Event], None]


class Emitter:
    def __init__(self, listeners: list[Listener] | tuple[Listener, ...] = ()):
        self.listeners = list(listeners)

    def emit(self, name: str, **data: Any) -> None:
        assert name in EVENTS, name
        event = Event(name, data)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a broken listener (a closed browser tab) never stops training
                log.exception("listener failed on %s", name)
