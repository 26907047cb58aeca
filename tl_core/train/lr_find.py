"""Learning-rate finder (fastai / Leslie Smith): a short sweep, lr growing exponentially each step, loss recorded.

A separate throw-away run of a few dozen steps on the train split, built from the same primitives as training
(backbone + new head, strategy, batched augmentation). The suggestion is where the smoothed loss falls fastest,
before it blows up: the head's learning rate (`TrainConfig.lr`; the backbone gets it times backbone_lr_factor).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from tl_core.config import DEFAULT_BACKBONE, TrainConfig
from tl_core.data.pipeline import Batcher, decode_many
from tl_core.data.sources import load_dataset
from tl_core.devices import pick_device
from tl_core.models import backbones

MAX_IMAGES = 512
SMOOTHING = 0.98
DIVERGED = 4.0  # stop once the smoothed loss is this many times its best


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]  # smoothed (exponential moving average, debiased)
    suggestion: float
    backbone: str
    strategy: str

    def to_dict(self) -> dict:
        return asdict(self)


def suggest(lrs: list[float], losses: list[float]) -> float:
    """The lr of steepest descent of the smoothed loss against log(lr), looked for before the loss minimum."""
    if len(lrs) < 3:
        raise ValueError("The sweep is too short to suggest a learning rate (fewer than 3 steps).")
    end = max(2, losses.index(min(losses)))
    start = min(len(lrs) // 10, end - 2)
    slopes = [(losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(start, end)]
    return lrs[start + slopes.index(min(slopes))]


def _param_groups(model: nn.Module, head: str, lr: float, factor: float) -> list[dict]:
    head_ids = {id(p) for p in model.get_submodule(head).parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) in head_ids], "scale": 1.0},
              {"params": [p for p in trainable if id(p) not in head_ids], "scale": factor}]
    return [{**g, "lr": lr * g["scale"]} for g in groups if g["params"]]


def lr_find(source: str, backbone: str = DEFAULT_BACKBONE, strategy: str = "finetune", steps: int = 100,
            batch_size: int = 16, start_lr: float = 1e-6, end_lr: float = 1.0, image_size: int | None = None,
            device: str | None = None, seed: int = 0,
            progress: Callable[[int, int], None] | None = None) -> LRFindResult:
    """Sweep lr from start_lr to end_lr over `steps` batches of the train split; returns the curve and a suggestion."""
    defaults = TrainConfig()
    ds = load_dataset(source)
    train = ds.split("train")
    if len(train) < 2:
        raise ValueError(f"{ds.name} has too few training images for a learning-rate sweep.")
    dev = pick_device(device)
    model, head, prep = backbones.build(backbone, len(ds.classes))
    prep = prep.at_size(image_size) if image_size else prep
    backbones.apply_strategy(model, head, strategy, defaults.finetune_stages)
    rng = random.Random(seed)
    samples = rng.sample(train, min(len(train), MAX_IMAGES, steps * batch_size))
    u8, kept, _ = decode_many(samples, prep.resize)
    labels = torch.tensor([samples[i].label for i in kept])
    model = model.to(dev).train()
    backbones.freeze_batchnorm(model, defaults.keep_bn_statistics)
    batcher = Batcher(prep, dev, "light")
    opt = torch.optim.AdamW(_param_groups(model, head, start_lr, defaults.backbone_lr_factor),
                            weight_decay=defaults.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=defaults.label_smoothing)
    gen = torch.Generator().manual_seed(seed)
    growth = (end_lr / start_lr) ** (1 / max(1, steps - 1))
    lrs, losses, avg, best = [], [], 0.0, math.inf
    for step in range(steps):
        lr = start_lr * growth**step
        for g in opt.param_groups:
            g["lr"] = lr * g["scale"]
        idx = torch.randint(len(kept), (min(batch_size, len(kept)),), generator=gen)
        loss = loss_fn(model(batcher.train(u8[idx], gen)), labels[idx].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        avg = SMOOTHING * avg + (1 - SMOOTHING) * loss.item()
        smooth = avg / (1 - SMOOTHING ** (step + 1))
        if not math.isfinite(smooth) or (step > 5 and smooth > DIVERGED * best):
            break
        lrs.append(lr)
        losses.append(smooth)
        best = min(best, smooth)
        if progress:
            progress(step + 1, steps)
    return LRFindResult(lrs, losses, suggest(lrs, losses), backbone, strategy)
