"""Does a picture look like anything the run was trained on? The answer a two-way softmax cannot give.

A softmax over ants and bees must share all of its mass between them, so a plain blue picture or random noise
gets "ants 90%". The network's own penultimate features (the head's input) carry what the softmax drops: how
far the picture is from every training picture. The score is the cosine distance to the K nearest training
embeddings (deep nearest neighbours, Sun et al. 2022), on the raw directions: centring them (as the
near-duplicate check does) turns every weakly-activating picture (a plain colour, noise) into "minus the mean",
which lands among the photos (measured on ants vs bees: blue, white and noise all inside the threshold when
centred, all far outside it raw). The threshold is the distance within which KEEP of the validation pictures
lie, so it is set on pictures the run never trained on; with their labels, when the classes are imbalanced, each
class's pictures weigh the same in that share, so a small class (further from the training pictures: fewer of its
own kind there) is not the one sent to "unsure".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file, save, save_file

from tl_core.data.balance import image_weights, weighted_quantile

FILE = "familiar.safetensors"
K = 5
KEEP = 0.95  # validation pictures inside the threshold: the rest (and anything further) reads "unsure"
MAX_REFERENCE = 2000  # training pictures embedded (evenly spaced): the first load of a big run stays short


@dataclass(frozen=True)
class Familiarity:
    reference: torch.Tensor  # [N, D] unit-length training embeddings
    threshold: float  # distance beyond which a picture looks like none of the classes
    checkpoint: float  # mtime of the checkpoint whose backbone made the embeddings; another one means recompute

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """Mean cosine distance of each row of `features` [M, D] to its K nearest training embeddings."""
        if len(features) == 0:
            return torch.empty(0)
        sim = unit(features) @ self.reference.T
        return 1 - sim.topk(min(K, len(self.reference)), dim=1).values.mean(1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"reference": self.reference.contiguous(), "threshold": torch.tensor([self.threshold], dtype=torch.float64),
                "checkpoint": torch.tensor([self.checkpoint], dtype=torch.float64)}

    def save(self, run_dir: Path) -> None:
        tmp = run_dir / f".{FILE}.tmp"
        save_file(self.tensors(), tmp)
        tmp.replace(run_dir / FILE)

    def to_bytes(self) -> bytes:
        return save(self.tensors())


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=1)


def fit(train: torch.Tensor, val: torch.Tensor, checkpoint: float, val_labels: torch.Tensor | None = None) -> Familiarity:
    """The reference (training embeddings) and the threshold that keeps KEEP of the validation pictures (of each
    class alike, given `val_labels`)."""
    step = max(1, -(-len(train) // MAX_REFERENCE))
    partial = Familiarity(unit(train[::step]), float("inf"), checkpoint)
    weight = torch.ones(len(val)) if val_labels is None else image_weights(val_labels)
    threshold = weighted_quantile(partial.distance(val), weight, KEEP) if len(val) else float("inf")
    return Familiarity(partial.reference, round(threshold, 6), checkpoint)


def load(path: Path, checkpoint: float) -> Familiarity | None:
    """The saved reference, or None when absent, unreadable, or made for another checkpoint."""
    try:
        fam = from_tensors(load_file(path))
    except (OSError, SafetensorError, KeyError, ValueError):
        return None
    return fam if fam.checkpoint == checkpoint else None


def from_bytes(data: bytes) -> Familiarity:
    """The reference as an export carries it."""
    return from_tensors(load_bytes(data))


def from_tensors(t: dict[str, torch.Tensor]) -> Familiarity:
    return Familiarity(t["reference"].float(), float(t["threshold"][0]), float(t["checkpoint"][0]))
