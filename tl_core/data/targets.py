"""What a picture's answer is: one class of several, or a set of labels.

A folder per class gives one label per picture (softmax, cross-entropy, accuracy); a CSV whose label cells join
several labels gives a multi-label dataset (one sigmoid per label, binary cross-entropy, exact-set accuracy). The
dataset decides which (`ImageDataset.multi_label`), and every consumer that turns labels into tensors, a loss, a
count of right answers or probabilities asks the `Targets` of the run instead of deciding again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tl_core.data import balance


@dataclass(frozen=True)
class Targets:
    """One label per picture: class indices, softmax, cross-entropy, argmax."""

    multi_label = False
    accuracy_name = "accuracy"

    def tensor(self, labels: Sequence[int | Sequence[int]], num_classes: int) -> torch.Tensor:
        return torch.tensor([_first(y) for y in labels], dtype=torch.long)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0, reduction: str = "mean",
             weight: torch.Tensor | None = None) -> torch.Tensor:
        """`weight`: per-class loss weights (imbalanced classes, `tl_core.plan.class_weights`)."""
        return F.cross_entropy(logits.float(), y, weight=weight, label_smoothing=label_smoothing, reduction=reduction)

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per picture: whether the answer is right (the top class)."""
        return logits.argmax(-1) == y

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(-1)

    def recall_counts(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[list[int], list[int]]:
        """(right answers, pictures) per class, summable over batches and processes before any ratio is taken."""
        return balance.recall_counts(logits.argmax(-1), y, logits.shape[-1])

    def row_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss per row for logits [..., C] and float targets broadcasting to them (one-hot here): the fitted head's
        objective, summed over rows there."""
        return torch.logsumexp(logits, -1) - (logits * target).sum(-1)

    def dense(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Targets as floats [N, C]: one-hot rows."""
        return F.one_hot(y, num_classes).float()


@dataclass(frozen=True)
class MultiLabel(Targets):
    """Any set of labels per picture: multi-hot rows, one sigmoid per label, binary cross-entropy; a picture is right
    when its whole label set is (exact-set accuracy), at 0.5 while training and at each label's threshold after."""

    multi_label = True
    accuracy_name = "exact-set accuracy"

    def tensor(self, labels: Sequence[int | Sequence[int]], num_classes: int) -> torch.Tensor:
        out = torch.zeros(len(labels), num_classes)
        for row, y in enumerate(labels):
            out[row, list(y) if isinstance(y, (list, tuple)) else [y]] = 1.0
        return out

    def loss(self, logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0, reduction: str = "mean",
             weight: torch.Tensor | None = None) -> torch.Tensor:
        """Each label is its own yes/no question, so no class outweighs another: `weight` is not used."""
        target = y * (1 - label_smoothing) + 0.5 * label_smoothing  # each label's two outcomes share the smoothing
        loss = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").sum(1)
        return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((logits > 0) == (y > 0.5)).all(-1)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid()

    def recall_counts(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[list[int], list[int]]:
        """Per label: pictures that have it and were given it (at 0.5), and pictures that have it."""
        has = (y > 0.5).cpu()
        return ((logits > 0).cpu() & has).sum(0).tolist(), has.sum(0).tolist()

    def row_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (F.softplus(logits) - logits * target).sum(-1)

    def dense(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        return y.float()


def of(multi_label: bool) -> Targets:
    return MultiLabel() if multi_label else Targets()


def _first(y: int | Sequence[int]) -> int:
    return y[0] if isinstance(y, (list, tuple)) else int(y)
