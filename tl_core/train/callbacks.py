"""Small listeners of the one training loop that may act on it (Ultralytics' callbacks): each integration one class.

`Checkpoint` keeps the best and the last weights with the optimiser's state after every epoch, `EarlyStopping`
ends a run that stopped improving, `LRSweep` turns a short run into a learning-rate sweep. The loop calls every
hook of every callback in order (`loop.Callback` declares them); a callback ends the run with `loop.end(reason)`.
"""

from __future__ import annotations

import math
from pathlib import Path

from tl_core.train import distributed
from tl_core.train.events import EpochRow, Logged
from tl_core.train.loop import Callback, Loop
from tl_core.train.runs import save_state, save_trainer_state


class Checkpoint(Callback):
    """best.safetensors when validation improved, last.safetensors and the optimiser's state every epoch."""

    def __init__(self, run_dir: Path, classes: list[str]):
        self.run_dir, self.classes = run_dir, classes

    def on_validated(self, loop: Loop, row: EpochRow, improved: bool) -> None:
        if not distributed.is_main():  # every rank holds the same weights and figures; rank 0 writes them
            return
        trainable = loop.strategy.state()
        if improved:
            save_state(self.run_dir / "best.safetensors", trainable, self.classes)
        save_state(self.run_dir / "last.safetensors", trainable, self.classes)
        save_trainer_state(self.run_dir, {"optimizer": loop.opt.state_dict(), "scheduler": loop.sched.state_dict(),
                                          "epoch": loop.epoch, "best_acc": loop.best_acc, "best_epoch": loop.best_epoch})


class EarlyStopping(Callback):
    """End the run after `patience` epochs without a better validation accuracy (0: never)."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_epoch_end(self, loop: Loop, row: EpochRow) -> None:
        if self.patience and loop.epoch - loop.best_epoch >= self.patience and loop.epoch < loop.epochs:
            loop.ctx.events.emit(Logged(f"Early stop: no better validation accuracy for {self.patience} epochs."))
            loop.end(f"early-stopped at epoch {loop.epoch} (patience {self.patience})")


SMOOTHING = 0.95  # a window of about 20 steps: 0.98 lags a 100-step sweep by dozens of steps
DIVERGED = 4.0  # the sweep ends once the smoothed loss is this many times its best


class LRSweep(Callback):
    """Each step's learning rate grows exponentially from `start` to `end` (every parameter group keeps its ratio
    to the head's rate); the debiased moving average of the loss is recorded, and the sweep ends when it diverges."""

    def __init__(self, start: float, end: float, steps: int, progress=None):
        self.start, self.growth, self.steps, self.progress = start, (end / start) ** (1 / max(1, steps - 1)), steps, progress
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self._avg, self._best = 0.0, math.inf

    def on_train_start(self, loop: Loop) -> None:
        head = loop.opt.param_groups[0]["lr"]
        self.scales = [g["lr"] / head for g in loop.opt.param_groups]

    def lr(self, step: int) -> float:
        return self.start * self.growth**step

    def on_step_start(self, loop: Loop, step: int) -> None:
        for g, scale in zip(loop.opt.param_groups, self.scales):
            g["lr"] = self.lr(step) * scale

    def on_step_end(self, loop: Loop, step: int, loss: float) -> None:
        self._avg = SMOOTHING * self._avg + (1 - SMOOTHING) * loss
        smooth = self._avg / (1 - SMOOTHING ** (step + 1))
        if not math.isfinite(smooth) or (step > 5 and smooth > DIVERGED * self._best):
            loop.end("the loss diverged")
            return
        self.lrs.append(self.lr(step))
        self.losses.append(smooth)
        self._best = min(self._best, smooth)
        if self.progress:
            self.progress(step + 1, self.steps)
