"""The command line's progress bars and tables, drawn by rich.

Bars and messages go to stderr and only on a terminal: piped or redirected, stderr stays empty and stdout holds
only the result (a table, or with `--json` one JSON object). Tables go to stdout, without colour or wrapping when
piped, so `grep` and `cut` see one row per line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bars
from rich.table import Column, Table
from rich.text import Text

from tl_core.formats import NOT_MEASURED, loss, missing, percent, seconds
from tl_core.train.events import EpochEnded, Event, Logged, PhaseProgress, PhaseStarted, RunEnded, RunFailed, StepEnded


class Progress:
    """Live bars on stderr (one per phase or epoch) and the run's messages above them; nothing when not a tty.

    Use it as a context manager (the bars stop and the cursor comes back on exit) and pass it as a training
    listener, or call `bar(label, done, total)` from a progress callback.
    """

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.enabled = self.console.is_terminal
        self._bars = Bars(TextColumn("{task.description:<24}"), BarColumn(bar_width=30), MofNCompleteColumn(),
                          TextColumn("{task.fields[extra]}"), TimeElapsedColumn(), console=self.console,
                          disable=not self.enabled)
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._bars.live.is_started:
            self._bars.stop()

    def bar(self, label: str, done: int, total: int, extra: str = "") -> None:
        if not self.enabled:
            return
        self._bars.start()  # idempotent
        task = self._tasks.get(label)
        if task is None:
            task = self._tasks[label] = self._bars.add_task(label, total=total, extra=extra)
        self._bars.update(task, completed=done, total=total, extra=extra)

    def callback(self, label: str) -> Callable[[int, int], None]:
        """A `(done, total)` progress callback drawing one bar."""
        return lambda done, total: self.bar(label, done, total)

    def say(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, highlight=False, markup=False)

    def __call__(self, e: Event) -> None:
        if isinstance(e, PhaseProgress):
            self.bar(e.phase, e.done, e.total, f"{e.rate:.0f}/s" if e.rate else "")
        elif isinstance(e, StepEnded) and e.eta is not None:
            rate = f", {e.images_per_s:.0f} img/s" if e.images_per_s else ""  # a fitted head has no training rate
            self.bar(f"epoch {e.epoch}", e.step, e.steps, f"loss {loss(e.loss)}{rate}, {seconds(e.eta)} left")
        elif isinstance(e, EpochEnded):
            r = e.row
            self.say(f"epoch {r.epoch}/{e.epochs}  train loss {loss(r.train_loss)} acc {percent(r.train_acc)}  "
                     f"val loss {loss(r.val_loss)} acc {percent(r.val_acc)}"
                     + (f" (balanced {percent(r.val_balanced_acc)})" if r.val_balanced_acc is not None else "")
                     + ("  (best)" if e.improved else ""))
        elif isinstance(e, (PhaseStarted, Logged)):
            self.say(e.message)
        elif isinstance(e, RunFailed):
            self.say(f"error: {e.message}")
        if isinstance(e, (RunEnded, RunFailed)):
            self.close()


def _cell(value: Any, fmt: Callable[[Any], str] | None) -> str:
    if missing(value) or value == "":
        return NOT_MEASURED
    if fmt:
        return fmt(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def print_table(rows: Sequence[dict], columns: Sequence[str], formats: dict[str, Callable[[Any], str]] | None = None,
                title: str | None = None) -> None:
    """Rows as a table on stdout; `formats` maps a column to its formatter (tl_core.formats). Headers and cells are
    plain text: class names and paths come from users and are never read as rich markup."""
    out = Console()
    if not out.is_terminal:  # piped: no colour, never wrapped or cut to 80 columns
        out = Console(width=100_000, no_color=True, highlight=False)
    table = Table(*(Column(Text(c)) for c in columns), box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0),
                  title=title, title_justify="left", highlight=False)
    for r in rows:  # Text, never markup: a class named "[x]" or "[bold]" prints as it is named
        table.add_row(*(Text(_cell(r.get(c), (formats or {}).get(c))) for c in columns))
    out.print(table)
