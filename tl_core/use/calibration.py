"""Confidences that mean what they say: temperature scaling, applied only where it helps on held-out images.

A fine-tuned network's softmax is usually over- or under-confident; one temperature T (logits / T) fitted by
likelihood on held-out data fixes most of it without changing any prediction (Guo et al., 2017). A fitted
logistic-regression head is often calibrated already, and a T fitted and scored on the same images looks better
than it is. So the validation split is cut in two folds: each fold's calibrated ECE comes from the T fitted on the
other fold, and T is applied only when that held-out ECE is lower than the raw one; otherwise confidences stay
raw and the record says so.

On an imbalanced validation split every figure here counts each class the same (`tl_core.data.balance.image_weights`):
with 200 ants and 20 bees, a plain likelihood, ECE or threshold is set by the ants, and the bees' confidences are
whatever suits the ants.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tl_core.data.balance import image_weights, weighted_quantile
from tl_core.features.probe import _threads_for
from tl_core.formats import percent

FILE = "calibration.json"
ECE_BINS = 15
RECALL_KEPT = 0.95  # the default "unsure" threshold keeps this share of right validation answers (classes alike)


FOLDS = 2


@dataclass(frozen=True)
class Calibration:
    temperature: float  # what predictions use: the fitted T when it helped, else 1.0
    ece: float  # expected calibration error of the raw softmax (validation split)
    ece_calibrated: float  # ... of what predictions use, held out: ece_scaled when applied, else ece
    threshold: float  # default confidence below which the answer is "unsure / none of these"
    images: int
    checkpoint: float  # mtime of the checkpoint it was fitted for; another one means refit
    fitted_temperature: float  # T fitted on the whole validation split
    ece_scaled: float  # ECE after scaling, each fold scaled by the T fitted on the other fold
    applied: bool  # scaling lowered the held-out ECE, so predictions use it

    def to_dict(self) -> dict:
        return asdict(self)

    def sentence(self) -> str:
        """What was done to the confidences and why, for the Predict page and `evaluate`."""
        if self.applied:
            return (f"Confidences are calibrated (temperature {self.temperature:.2f}, fitted on {self.images} validation "
                    f"images): calibration error {percent(self.ece)} before, {percent(self.ece_calibrated)} after "
                    f"(measured on validation images the temperature was not fitted on).")
        return (f"Confidences are the model's own, not rescaled: temperature scaling did not lower the calibration error "
                f"on held-out validation images ({percent(self.ece)} as they are, {percent(self.ece_scaled)} scaled), "
                f"so it is not applied.")


def ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error: the gap between confidence and accuracy, averaged over equal-width bins (each
    class counting the same when the classes are imbalanced)."""
    if len(labels) == 0:
        return 0.0
    conf, pred = probs.double().max(1)
    right = (pred == labels).double()
    weight = image_weights(labels, probs.shape[1])
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        w = weight[inside]
        if w.sum() > 0:
            total += w.sum().item() * abs(((conf[inside] - right[inside]) * w).sum().item() / w.sum().item())
    return total


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T minimising the negative log-likelihood of softmax(logits / T) (class-balanced when the classes are
    imbalanced); optimised in log space so T > 0."""
    logits, labels = logits.double(), labels.long()
    weight = image_weights(labels, logits.shape[1])
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (torch.nn.functional.cross_entropy(logits / log_t.exp(), labels, reduction="none") * weight).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), _threads_for(logits.numel() * 1e3):  # tiny: one thread, no spinning thread pool
        opt.step(closure)
    t = float(log_t.detach().exp())
    return min(max(t, 0.05), 20.0)  # a degenerate split (all right, tiny) must not give an absurd T


def default_threshold(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Below this calibrated confidence only 5% of the right validation answers fall, each image weighing by the
    inverse of its class's size when the classes are imbalanced: a small class's (often less confident) answers
    are not the ones sent to "unsure"."""
    conf, pred = probs.max(1)
    right = pred == labels
    chance = 1.0 / probs.shape[1]
    if not right.any():
        return chance
    return max(chance, weighted_quantile(conf[right], image_weights(labels, probs.shape[1])[right], 1 - RECALL_KEPT))


def held_out_scaled(logits: torch.Tensor, labels: torch.Tensor, folds: int = FOLDS) -> torch.Tensor:
    """Calibrated probabilities where each image's temperature was fitted without it (interleaved folds)."""
    probs = logits.float().softmax(1)
    for k in range(folds):
        inside = torch.arange(len(labels)) % folds == k
        if inside.all() or not inside.any():
            continue
        t = fit_temperature(logits[~inside], labels[~inside])
        probs[inside] = (logits[inside].float() / t).softmax(1)
    return probs


def calibrate(logits: torch.Tensor, labels: torch.Tensor, checkpoint: float = 0.0) -> Calibration:
    """Fit T on (validation) logits; keep it only if it lowers the held-out ECE; plus the default unsure threshold."""
    fitted = fit_temperature(logits, labels) if len(labels) else 1.0
    raw = ece(logits.float().softmax(1), labels)
    scaled = ece(held_out_scaled(logits, labels), labels) if len(labels) >= 2 * FOLDS else raw
    applied = scaled < raw
    t = fitted if applied else 1.0
    return Calibration(round(t, 6), round(raw, 6), round(scaled if applied else raw, 6),
                       round(default_threshold((logits.float() / t).softmax(1), labels), 6), len(labels), checkpoint,
                       round(fitted, 6), round(scaled, 6), applied)


def save(run_dir: Path, cal: Calibration) -> None:
    from tl_core.paths import write_json

    write_json(run_dir / FILE, cal.to_dict())


def load(run_dir: Path, checkpoint: float) -> Calibration | None:
    """The saved calibration, or None when absent, unreadable, or fitted for another checkpoint."""
    try:
        cal = Calibration(**json.loads((run_dir / FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return cal if cal.checkpoint == checkpoint else None
