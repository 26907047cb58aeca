"""Learning-rate finder (fastai / Leslie Smith): a short run of the one training loop with the rate growing
exponentially each step, the smoothed loss recorded, and a rate suggested from the curve.

The sweep is `Trainer.sweep`: the user's whole configuration (backbone, strategy, batch size, augmentation,
optimiser, weight decay, label smoothing, image size) on the user's own split, so it advises the run about to
start. The suggestion is the head's learning rate (`TrainConfig.lr`; the backbone gets it times
backbone_lr_factor), chosen so that it trains: where the smoothed loss falls fastest, at most a third of the rate
at which it bottoms out (past that it soon diverges), and inside a sane range for the optimiser.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass

from tl_core.config import TrainConfig
from tl_core.data.sources import DatasetSpec
from tl_core.train.callbacks import LRSweep
from tl_core.train.events import Listener
from tl_core.train.trainer import Trainer

SANE = {"adamw": (1e-5, 1e-2), "sgd": (1e-4, 1e-1)}  # head rates outside these hardly ever train a pretrained net
BELOW_MINIMUM = 3.0  # the suggestion stays this many times below the rate of the lowest loss
FLAT = 0.05  # a curve whose loss never falls this fraction below its start tells nothing


@dataclass(frozen=True)
class LRFindResult:
    lrs: list[float]
    losses: list[float]  # smoothed (exponential moving average, debiased)
    suggestion: float
    reason: str  # how the suggestion was chosen, for people
    backbone: str
    strategy: str

    def to_dict(self) -> dict:
        return asdict(self)


def _steepest(lrs: list[float], losses: list[float], end: int) -> int:
    """Index of the steepest fall of the loss against log(lr) before `end`, over windows of a tenth of the sweep
    (single-step slopes of a noisy curve point at noise)."""
    w = max(2, len(lrs) // 10)
    slopes = [((losses[i + w] - losses[i]) / (math.log(lrs[i + w]) - math.log(lrs[i])), i + w // 2)
              for i in range(0, max(1, end - w + 1)) if i + w < len(lrs)]
    return min(slopes)[1] if slopes else 0


def suggest(lrs: list[float], losses: list[float], config: TrainConfig) -> tuple[float, str]:
    """(suggested head rate, why): the steepest descent of the smoothed loss, bounded by the rate of its minimum
    (a third of it at most) and by the optimiser's sane range; the configured rate when the curve is flat."""
    if len(lrs) < 5:
        raise ValueError("The sweep is too short to suggest a learning rate (fewer than 5 steps before the loss diverged).")
    low, high = SANE[config.optimizer]
    best = losses.index(min(losses))
    if losses[0] - losses[best] < FLAT * abs(losses[0]):
        return config.head_lr, "the loss hardly fell during the sweep, so the configured rate is kept"
    steep = lrs[_steepest(lrs, losses, best)]
    bounded = min(steep, lrs[best] / BELOW_MINIMUM)
    lr = min(max(bounded, low), high)
    notes = [f"steepest fall of the loss at {steep:.1e}, lowest loss at {lrs[best]:.1e}"]
    if bounded < steep:
        notes.append("kept a third below the lowest-loss rate")
    if lr != bounded:
        notes.append(f"kept within {low:g}..{high:g}")
    return lr, "; ".join(notes)


def lr_find(data: str | DatasetSpec, config: TrainConfig, steps: int = 100, start_lr: float = 1e-6, end_lr: float = 1.0,
            progress: Callable[[int, int], None] | None = None, listeners: list[Listener] | tuple = (),
            stop: threading.Event | None = None) -> LRFindResult:
    """Sweep the head's rate from start_lr to end_lr over `steps` training steps of this configuration."""
    if steps < 5:
        raise ValueError("The sweep needs at least 5 steps.")
    if not 0 < start_lr < end_lr:
        raise ValueError("The sweep's start rate must be positive and below its end rate.")
    sweep = Trainer(config, listeners, stop).sweep(data, LRSweep(start_lr, end_lr, steps, progress))
    lr, why = suggest(sweep.lrs, sweep.losses, config)
    return LRFindResult(sweep.lrs, sweep.losses, lr, why, config.backbone, config.strategy)
