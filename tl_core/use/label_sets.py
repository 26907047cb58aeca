"""A multi-label run's answers: which labels a picture has, and how good those sets are.

Each label has its own sigmoid, and 0.5 is rarely the best place to cut it: a rare label's probabilities sit low.
Each label's threshold is chosen on the validation split (the one that maximises that label's F1 there) and kept
beside the run, for the checkpoint it was chosen for, as calibration is for a one-class run. Prediction, `evaluate`,
the pages and exports all cut at these thresholds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

FILE = "label_thresholds.json"
DEFAULT = 0.5  # a label with no positive validation picture keeps the sigmoid's own midpoint


@dataclass(frozen=True)
class LabelThresholds:
    thresholds: list[float]  # per label, in the run's class order
    checkpoint_stamp: float  # mtime of the best checkpoint they were chosen for

    def cut(self, probs: torch.Tensor) -> torch.Tensor:
        """[N, C] booleans: which labels each picture has."""
        return probs >= torch.tensor(self.thresholds, dtype=probs.dtype)

    def save(self, run_dir: Path) -> None:
        from tl_core.paths import write_json

        write_json(run_dir / FILE, asdict(self))

    def sentence(self) -> str:
        return ("Each label's threshold was chosen on the validation split (the one giving that label's best F1): "
                + ", ".join(f"{t:.2f}" for t in self.thresholds) + ".")


def load(run_dir: Path, stamp: float) -> LabelThresholds | None:
    """The thresholds kept for this checkpoint; None when missing, unreadable or of another checkpoint."""
    try:
        d = json.loads((run_dir / FILE).read_text())
        found = LabelThresholds([float(t) for t in d["thresholds"]], float(d["checkpoint_stamp"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if found.checkpoint_stamp == stamp else None


def best_threshold(probs: torch.Tensor, truth: torch.Tensor) -> float:
    """The cut of one label's probabilities [N] with the best F1 against its truth [N] (bool), halfway between
    neighbouring probabilities so that it does not sit on a validation picture; ties go to the cut nearest 0.5.
    Every cut is scored at once from the sorted probabilities (N log N, not N squared)."""
    if not truth.any():
        return DEFAULT
    values, inverse = torch.unique(probs.double(), return_inverse=True)  # ascending
    positives = torch.zeros(len(values), dtype=torch.double).index_add_(0, inverse, truth.double())
    pictures = torch.bincount(inverse, minlength=len(values)).double()
    # cutting just below values[i] says yes to values[i:], so count from the top
    tp, said = positives.flip(0).cumsum(0).flip(0), pictures.flip(0).cumsum(0).flip(0)
    f1 = torch.cat([2 * tp / (said + truth.sum()), torch.zeros(1, dtype=torch.double)])  # the last cut: nothing said
    cuts = torch.cat([values[:1] / 2, (values[1:] + values[:-1]) / 2, (values[-1:] + 1) / 2])
    best = max(range(len(cuts)), key=lambda i: (round(float(f1[i]), 9), -abs(float(cuts[i]) - DEFAULT)))
    return float(cuts[best])


def choose(probs: torch.Tensor, truth: torch.Tensor, stamp: float) -> LabelThresholds:
    """Every label's threshold, from validation probabilities [N, C] and multi-hot truth [N, C]."""
    truth = truth > 0.5
    return LabelThresholds([best_threshold(probs[:, c], truth[:, c]) for c in range(probs.shape[1])], stamp)


@dataclass(frozen=True)
class LabelScores:
    """How good the predicted label sets are: per label, and over all of them."""

    per_label: list[dict]  # label, precision, recall, f1, average precision, support, threshold
    micro_f1: float  # F1 over every (picture, label) decision together: frequent labels weigh more
    macro_f1: float  # mean of the labels' F1: every label weighs the same
    mean_average_precision: float  # mean over labels of the area under precision-recall (no threshold involved)
    exact_set_accuracy: float  # pictures whose whole label set is right


def average_precision(scores: torch.Tensor, truth: torch.Tensor) -> float:
    """Area under one label's precision-recall curve, as scikit-learn's average_precision_score (0 without positives)."""
    if not truth.any():
        return 0.0
    order = torch.argsort(scores, descending=True, stable=True)
    hits = truth[order].double()
    precision_at = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.double)
    return float((precision_at * hits).sum() / hits.sum())


def scores(probs: torch.Tensor, truth: torch.Tensor, thresholds: LabelThresholds, labels: list[str]) -> LabelScores:
    truth = truth > 0.5
    said = thresholds.cut(probs)
    tp, fp, fn = ((said & truth).sum(0), (said & ~truth).sum(0), (~said & truth).sum(0))
    per_label, f1s = [], []
    for c, name in enumerate(labels):
        precision = float(tp[c] / (tp[c] + fp[c])) if tp[c] + fp[c] else 0.0
        recall = float(tp[c] / (tp[c] + fn[c])) if tp[c] + fn[c] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        per_label.append({"label": name, "precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
                          "average_precision": round(average_precision(probs[:, c], truth[:, c]), 4),
                          "support": int(truth[:, c].sum()), "threshold": round(thresholds.thresholds[c], 4)})
    all_tp, all_fp, all_fn = int(tp.sum()), int(fp.sum()), int(fn.sum())
    micro = 2 * all_tp / (2 * all_tp + all_fp + all_fn) if all_tp + all_fp + all_fn else 0.0
    present = [row["average_precision"] for row in per_label if row["support"]]
    return LabelScores(per_label, round(micro, 4), round(sum(f1s) / len(f1s), 4) if f1s else 0.0,
                       round(sum(present) / len(present), 4) if present else 0.0,
                       round(float((said == truth).all(1).double().mean()), 4) if len(truth) else 0.0)
