"""Which backbone for *this* dataset: accuracy of a fitted linear head on its frozen embeddings, next to the
latency measured on this machine and the weight file's size.

The figure is the one a feature-extraction run of the same backbone reaches: the same cached embeddings (same
views, augmentation and seed as the training settings) and the same head fit (`linear_probe.fit_head`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from tl_core import plan
from tl_core.config import TrainConfig
from tl_core.data import targets
from tl_core.data.overrides import apply_overrides
from tl_core.data.sources import DatasetError, ImageDataset
from tl_core.features.frozen import FrozenBackbone, embed_dataset
from tl_core.features.probe import fit_head
from tl_core.measure import speed
from tl_core.models import backbones

NEAR_BEST = 0.01  # accuracies within one point of the best count as equal: the faster backbone wins


@dataclass
class Comparison:
    name: str
    val_accuracy: float | None  # None when the backbone could not be evaluated (see error)
    cv_accuracy: float | None
    l2: float | None
    views: int | None
    ms_per_image: float | None
    size_mb: float | None
    seconds: float
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_backbone(ds: ImageDataset, name: str, config: TrainConfig,
                      progress: Callable[[str, int, int], None] | None = None,
                      should_stop: Callable[[], bool] | None = None) -> Comparison:
    """One backbone: embeddings (cached), the fitted head, its validation accuracy, latency and size."""
    t0 = time.perf_counter()
    try:
        backbones.check_name(name)
        size_mb = backbones.describe(name).size_mb
        run = plan.for_images(replace(config, backbone=name), [s.path for s in ds.samples])
        frozen = FrozenBackbone.for_plan(run)
    except (backbones.WeightsUnavailable, ValueError) as e:
        return Comparison(name, None, None, None, None, None, None, time.perf_counter() - t0, str(e))
    parts = embed_dataset(ds, frozen, run.views, config.augment, config.seed, progress, should_stop)
    train, val = parts["train"], parts["val"]
    answers, n = targets.of(ds.multi_label), len(ds.classes)
    y_train, y_val = (answers.tensor([s.target for s in e.samples], n) for e in (train, val))
    head = fit_head(train.x, y_train, n, seed=config.seed, should_stop=should_stop, targets=answers)
    logits = val.x[0].float() @ head.weight.T + head.bias  # exact-set accuracy for label sets
    accuracy = answers.correct(logits, y_val).float().mean().item()
    measured = speed.load_speeds(frozen.device).get(name) or speed.measure(name, frozen.device)
    return Comparison(name, round(accuracy, 4), round(head.cv_accuracy, 4), head.l2, head.views,
                      measured.ms_per_image, size_mb, round(time.perf_counter() - t0, 2))


def compare(ds: ImageDataset, names: list[str], config: TrainConfig | None = None,
            progress: Callable[[str, int, int], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> list[Comparison]:
    """Every named backbone in turn; one whose weights are unavailable is reported with its reason, not raised."""
    config = config or TrainConfig()
    ds = apply_overrides(ds)
    if not ds.split("train") or not ds.split("val"):
        raise DatasetError("Comparing backbones needs a training and a validation split.")
    rows = []
    for i, name in enumerate(names):
        label = f"{name} ({i + 1}/{len(names)})"
        report = (lambda phase, done, total, label=label: progress(f"{label} {phase}", done, total)) if progress else None
        rows.append(evaluate_backbone(ds, name, config, report, should_stop))
    return rows


def pareto_front(rows: list[Comparison]) -> list[str]:
    """Backbones no other one beats on both accuracy and latency."""
    done = [r for r in rows if r.val_accuracy is not None and r.ms_per_image is not None]
    return [r.name for r in done
            if not any(o.val_accuracy >= r.val_accuracy and o.ms_per_image <= r.ms_per_image
                       and (o.val_accuracy, -o.ms_per_image) != (r.val_accuracy, -r.ms_per_image) for o in done)]


def recommend(rows: list[Comparison]) -> str | None:
    """The fastest backbone whose accuracy is within NEAR_BEST of the best one."""
    done = [r for r in rows if r.val_accuracy is not None]
    if not done:
        return None
    best = max(r.val_accuracy for r in done)
    near = [r for r in done if r.val_accuracy >= best - NEAR_BEST]
    return min(near, key=lambda r: (r.ms_per_image if r.ms_per_image is not None else float("inf"), -r.val_accuracy)).name
