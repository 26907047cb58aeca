"""The one training loop: epochs, steps, optimiser, schedule, stop checks, rate, ETA and events.

Everything that trains runs through `Loop.run`: a run of either strategy, a resumed run, and the learning-rate
finder's short sweep. What differs between them is the strategy (`tl_core.train.strategies`) and the callbacks
(`tl_core.train.callbacks`: checkpoints, early stopping, the sweep), nanoGPT's single loop with Ultralytics' hooks.
Under torchrun the same loop runs in every process; losses, counts and stop requests are all-reduced, so every
rank takes the same decisions.
"""

from __future__ import annotations

import math
import time

import torch

from tl_core.data.balance import balanced_accuracy
from tl_core.devices import needs_grad_scaler
from tl_core.train import distributed
from tl_core.train.events import EpochEnded, EpochRow, StepEnded
from tl_core.train.strategies import Context, Stopped, Strategy


class Callback:
    """Hooks the loop calls on every callback, in order; `loop.end(reason)` ends the run."""

    def on_train_start(self, loop: Loop) -> None: ...
    def on_step_start(self, loop: Loop, step: int) -> None: ...
    def on_step_end(self, loop: Loop, step: int, loss: float) -> None: ...

    def on_validated(self, loop: Loop, row: EpochRow, improved: bool) -> None:
        """After validation, before the listeners hear of the epoch (a checkpoint is on disk when they do)."""

    def on_epoch_end(self, loop: Loop, row: EpochRow) -> None: ...


def optimizer(ctx: Context, groups: list[dict], steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    cfg = ctx.config
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, momentum=0.9, weight_decay=cfg.weight_decay)
    else:
        # fused on CPU: one kernel over every tensor instead of a Python loop over each of them
        opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=ctx.device.type == "cpu" or None)
    if cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps)
    else:
        warm = max(1, steps // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    return opt, sched


class Loop:
    """One pass of training: `prepare` builds the strategy's data and the optimiser; `run` trains from `start`."""

    def __init__(self, ctx: Context, strategy: Strategy, callbacks: list[Callback], epochs: int, seconds_before: float = 0.0):
        self.ctx, self.strategy, self.callbacks, self.epochs = ctx, strategy, callbacks, epochs
        self.epoch, self.best_acc, self.best_epoch = 0, 0.0, 0
        self.images_per_s: float | None = 0.0 if strategy.has_rate else None  # None: no training rate to report
        self.t0, self.seconds_before = time.perf_counter(), seconds_before
        self.ended: str | None = None

    def end(self, reason: str) -> None:
        self.ended = reason

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.t0

    def sync_stop(self) -> None:
        """Before every step: stop on every rank when any of them (rank 0, which the job manager asks) was asked."""
        if distributed.any_rank(self.ctx.stop.is_set()):
            raise Stopped

    def prepare(self) -> None:
        self.strategy.prepare()
        self.batch_size = distributed.per_rank_batch(self.ctx.config.batch_size)
        self.steps_per_epoch = self.strategy.steps_per_epoch(self.batch_size)
        self.opt, self.sched = optimizer(self.ctx, self.strategy.param_groups(), self.epochs * self.steps_per_epoch)

    def run(self, start: int = 0) -> str | None:
        """Train epochs start+1 .. epochs; returns why the run ended early, or None."""
        ctx, cfg, strategy = self.ctx, self.ctx.config, self.strategy
        self.epoch = start
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=needs_grad_scaler(strategy.autocast))
        gen = torch.Generator().manual_seed(cfg.seed + start + 1_000_003 * distributed.rank())  # each rank its own draws
        for cb in self.callbacks:
            cb.on_train_start(self)
        ctx.phase("training", f"Training ({cfg.strategy}) on {strategy.n_train} images")
        t_train, steps_done, seen, train_time = time.perf_counter(), 0, 0, 0.0
        steps_left = (self.epochs - start) * self.steps_per_epoch
        for epoch in range(start + 1, self.epochs + 1):
            t_epoch, total, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
            strategy.train_mode(self.epoch)
            for step, idx in enumerate(strategy.batches(self.batch_size, gen)):
                self.sync_stop()
                for cb in self.callbacks:
                    cb.on_step_start(self, steps_done)
                t_step = time.perf_counter()
                loss_value, logits, y = strategy.step(idx, gen, self.opt, self.sched, scaler, cfg.label_smoothing, ctx.device)
                train_time += time.perf_counter() - t_step
                total, seen, steps_done = total + len(y), seen + len(y), steps_done + 1
                correct += ctx.targets.correct(logits, y).sum().item()
                loss_sum += loss_value * len(y)
                # the ranks step in lockstep, so the whole job's rate is this rank's times their number
                if strategy.has_rate:
                    self.images_per_s = seen * distributed.size() / max(train_time, 1e-9)
                elapsed = time.perf_counter() - t_train  # includes validation, so the ETA does too
                eta = elapsed / steps_done * (steps_left - steps_done)
                ctx.events.emit(StepEnded(epoch, step + 1, self.steps_per_epoch, loss_value, self.sched.get_last_lr()[0],
                                          self.images_per_s, eta))
                for cb in self.callbacks:
                    cb.on_step_end(self, steps_done - 1, loss_value)
                if self.ended:
                    return self.ended
            loss_sum, correct, total = distributed.all_sum(loss_sum, correct, total)
            val_loss, val_acc = strategy.validate(ctx.check_stop)
            recalls = strategy.val_recall
            self._end_epoch(EpochRow(epoch, loss_sum / total, correct / total, val_loss, val_acc,
                                     self.sched.get_last_lr()[0], self.images_per_s, time.perf_counter() - t_epoch,
                                     # a label set's recalls are each label's own: their mean is no balanced accuracy
                                     val_balanced_acc=None if recalls is None or ctx.targets.multi_label
                                     else balanced_accuracy(recalls),
                                     val_recall=recalls))
            if self.ended:
                return self.ended
        return None

    def _end_epoch(self, row: EpochRow) -> None:
        self.epoch = row.epoch
        improved = row.val_acc > self.best_acc or self.best_epoch == 0
        if improved:
            self.best_acc, self.best_epoch = row.val_acc, row.epoch
        for cb in self.callbacks:
            cb.on_validated(self, row, improved)
        row = EpochRow(**{**row.to_dict(), "seconds": round(self.seconds(), 3), "best_val_acc": self.best_acc,
                          "best_epoch": self.best_epoch})
        self.ctx.events.emit(EpochEnded(row, self.epochs, improved))
        for cb in self.callbacks:
            cb.on_epoch_end(self, row)


__all__ = ["Callback", "Loop", "Stopped", "optimizer"]
