"""The run folder as a listener: metrics.jsonl and summary.json follow the trainer's events.

Checkpoints are written by the trainer itself (it holds the tensors); everything a person reads about a run
(its curve, status, best figures, skipped files, why it ended) is written here, from the same typed events
the CLI and the dashboard receive.
"""

from __future__ import annotations

from dataclasses import asdict

from tl_core.train.events import EpochEnded, EpochRow, Event, RunEnded, RunFailed, RunStarted
from tl_core.train.runs import Run, RunStatus


class RunRecorder:
    def __init__(self, run: Run):
        self.run = run
        self.classes: list[str] = []

    def __call__(self, e: Event) -> None:
        if not self.run.dir.exists():  # deleted while training: the failure says so; there is nowhere to write
            return
        if isinstance(e, RunStarted):
            self.classes = e.classes
            self.run.write_summary(status=RunStatus.RUNNING, error=None, suggestion=None, stop_reason=None,
                                   **({} if e.resume else dict(best_val_accuracy=0.0, best_epoch=0, epochs_completed=0, seconds=0.0)))
        elif isinstance(e, EpochEnded):
            r = e.row
            self.run.append_metrics(r.to_dict())
            self.run.write_summary(status=RunStatus.RUNNING, best_val_accuracy=r.best_val_acc, best_epoch=r.best_epoch,
                                   epochs_completed=r.epoch, seconds=r.seconds, **(self._balanced(r) if e.improved else {}))
        elif isinstance(e, RunEnded):
            r = e.result
            self.run.write_summary(status=r.status, best_val_accuracy=r.best_val_accuracy, best_epoch=r.best_epoch,
                                   epochs_completed=r.epochs_completed, seconds=r.seconds, stop_reason=r.stop_reason,
                                   images_per_s=r.images_per_s, skipped=[asdict(p) for p in e.skipped][:1000])
        elif isinstance(e, RunFailed):
            self.run.write_summary(status=RunStatus.FAILED, error=e.message, suggestion=e.suggestion)

    def _balanced(self, row: EpochRow) -> dict:
        """The best checkpoint's balanced accuracy and per-class recall, beside its accuracy."""
        if row.val_recall is None:
            return {}
        return {"best_val_balanced_accuracy": row.val_balanced_acc,
                "best_val_recall": {c: r for c, r in zip(self.classes, row.val_recall)}}
