"""Figures in which every class counts the same, whatever its share of the images.

With 200 ants and 20 bees, a model that answers "ants" to everything is 91% accurate and useless on bees. The
class weights training uses (`tl_core.plan.class_weights`), balanced accuracy and per-class recall (the run's
summary, `evaluate`), the temperature and the "unsure" threshold (`tl_core.use.calibration`) and the familiarity
threshold (`tl_core.use.familiarity`) all weigh images by the inverse of their class's share, from here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tl_core.data.scan import is_imbalanced


def inverse_frequency(counts: Sequence[int]) -> list[float]:
    """n / (C * n_c) per class (scikit-learn's "balanced"): each class's images weigh as much in total as any other
    class's, and the weights' mean over the images is 1. A class without images gets 0 (C counts classes with images)."""
    present = [n for n in counts if n > 0]
    total = sum(present)
    return [total / (len(present) * n) if n > 0 else 0.0 for n in counts]


def class_balanced(labels: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """A weight per image (summing to 1) under which every class present has the same total weight."""
    labels = torch.as_tensor(labels).long()
    if len(labels) == 0:
        return torch.empty(0, dtype=torch.float64)
    counts = torch.bincount(labels, minlength=num_classes or 0)
    return torch.tensor(inverse_frequency(counts.tolist()), dtype=torch.float64)[labels] / len(labels)


def image_weights(labels: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """The weight of each held-out image (summing to 1) in the figures set on a validation split: class-balanced
    when its classes are imbalanced (the scan's cut), else every image alike. Below the cut reweighting changes
    little and only adds noise: on 60 images of three near-equal classes a class-balanced temperature, fitted on
    half of them, lowered the other half's calibration error less often than the plain one (6 of 8 seeds, not 8)."""
    labels = torch.as_tensor(labels).long()
    counts = torch.bincount(labels, minlength=num_classes or 0).tolist()
    if is_imbalanced(counts):
        return class_balanced(labels, num_classes)
    return torch.full((len(labels),), 1 / max(len(labels), 1), dtype=torch.float64)


def recall_counts(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[list[int], list[int]]:
    """(right answers, images) per true class: summable across processes before any ratio is taken."""
    labels = labels.long().cpu()
    hits = torch.bincount(labels[predicted.cpu() == labels], minlength=num_classes)
    return hits.tolist(), torch.bincount(labels, minlength=num_classes).tolist()


def recall(hits: Sequence[float], support: Sequence[float]) -> list[float | None]:
    """Share of each class's images answered right; None for a class with no image to answer."""
    return [h / n if n else None for h, n in zip(hits, support)]


def balanced_accuracy(recalls: Sequence[float | None]) -> float:
    """The mean recall over the classes that have images: accuracy as if every class were equally common."""
    known = [r for r in recalls if r is not None]
    return sum(known) / len(known) if known else 0.0


def weighted_quantile(values: torch.Tensor, weights: torch.Tensor, q: float) -> float:
    """The q-quantile of `values` with each counted by its weight, interpolated linearly: with equal weights
    exactly `torch.quantile`. The sorted values sit at the weight before them over the total less the last one's."""
    order = values.double().argsort()
    v, w = values.double()[order], weights.double()[order]
    before = w.cumsum(0) - w
    if len(v) == 1 or before[-1] <= 0:
        return float(v[-1])
    return float(np.interp(q, (before / before[-1]).numpy(), v.numpy()))
