"""Confidences that mean what they say: temperature scaling fitted on the validation split, and its ECE.

A fine-tuned network's softmax is usually over- or under-confident; one temperature T (logits / T) fitted by
likelihood on held-out data fixes most of it without changing any prediction (Guo et al., 2017).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

FILE = "calibration.json"
ECE_BINS = 15
RECALL_KEPT = 0.95  # the default "unsure" threshold keeps this share of right validation answers


@dataclass(frozen=True)
class Calibration:
    temperature: float
    ece: float  # expected calibration error before scaling (validation split)
    ece_calibrated: float  # ... and after
    threshold: float  # default confidence below which the answer is "unsure / none of these"
    images: int
    checkpoint: float = 0.0  # mtime of the checkpoint it was fitted for; another one means refit

    def to_dict(self) -> dict:
        return asdict(self)


def ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error: the gap between confidence and accuracy, averaged over equal-width bins."""
    if len(labels) == 0:
        return 0.0
    conf, pred = probs.max(1)
    right = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.float().mean().item() * abs(conf[inside].mean().item() - right[inside].mean().item())
    return total


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T minimising the negative log-likelihood of softmax(logits / T); optimised in log space so T > 0."""
    logits, labels = logits.double(), labels.long()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    t = float(log_t.detach().exp())
    return min(max(t, 0.05), 20.0)  # a degenerate split (all right, tiny) must not give an absurd T


def default_threshold(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Below this calibrated confidence only 5% of the right validation answers fall: lower means "unsure"."""
    conf, pred = probs.max(1)
    right = conf[pred == labels]
    chance = 1.0 / probs.shape[1]
    if len(right) == 0:
        return chance
    return max(chance, float(torch.quantile(right, 1 - RECALL_KEPT)))


def calibrate(logits: torch.Tensor, labels: torch.Tensor, checkpoint: float = 0.0) -> Calibration:
    """Fit T on (validation) logits and report ECE before and after, plus the default unsure threshold."""
    t = fit_temperature(logits, labels) if len(labels) else 1.0
    raw, scaled = logits.float().softmax(1), (logits.float() / t).softmax(1)
    return Calibration(round(t, 6), round(ece(raw, labels), 6), round(ece(scaled, labels), 6),
                       round(default_threshold(scaled, labels), 6), len(labels), checkpoint)


def save(run_dir: Path, cal: Calibration) -> None:
    from tl_core.train.runs import write_json

    write_json(run_dir / FILE, cal.to_dict())


def load(run_dir: Path, checkpoint: float) -> Calibration | None:
    """The saved calibration, or None when absent, unreadable, or fitted for another checkpoint."""
    try:
        cal = Calibration(**json.loads((run_dir / FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return cal if cal.checkpoint == checkpoint else None
