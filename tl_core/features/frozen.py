"""A frozen backbone's embeddings of a dataset's images, through the same on-disk cache training uses.

Backbone comparison, data health and the feature-extraction run all key their cache entries the same way
(backbone, weights, preprocessing, dtype, view, augmentation and seed for augmented views), so whichever
runs first pays for the backbone passes and the others read them back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from tl_core.data.images import content_hash
from tl_core.data.pipeline import Batcher, decode_filled
from tl_core.data.sources import ImageDataset, Problem, Sample
from tl_core.devices import fast_dtype, inference_batch, memory_format, pick_device
from tl_core.features.cache import EmbeddingCache, compute_views, group_key, headless, inference_copy
from tl_core.models import backbones
from tl_core.models.backbones import Preprocessing
from tl_core.plan import Plan

Progress = Callable[[str, int, int], None]  # (phase, done, total)


def weights_id(backbone: str, pretrained: bool = True, weights_path: str | None = None, seed: int = 0) -> str:
    """What identifies the backbone's numbers: a user's file by content, random init by seed, else the release."""
    if weights_path:
        return f"file:{content_hash(weights_path)}"
    if not pretrained:
        return f"scratch:seed{seed}"
    return str(backbones.pick_weights(backbone))


def embedding_caches(name: str, weights: str, prep: Preprocessing, dtype: torch.dtype | None, views: int, augment: str,
                     seed: int) -> list[EmbeddingCache]:
    """The cache group of each view (the trainer and `compare` share them): the clean view is shared by every
    augmentation and seed, an augmented view belongs to its augmentation and seed."""
    base = dict(backbone=name, weights=weights, prep=asdict(prep), dtype=str(dtype))
    return [EmbeddingCache(group_key(**base, view=0))] + [
        EmbeddingCache(group_key(**base, view=v, augment=augment, seed=seed)) for v in range(1, views)]


def plan_caches(plan: Plan, dtype: torch.dtype | None) -> list[EmbeddingCache]:
    """The cache groups a fitted-head run of this plan fills and reads: the trainer's and the estimate's."""
    cfg = plan.config
    return embedding_caches(cfg.backbone, weights_id(cfg.backbone, cfg.pretrained, cfg.weights_path, cfg.seed),
                            plan.preprocessing, dtype, plan.views, cfg.augment, cfg.seed)


@dataclass
class Embedded:
    """One split's embeddings: x is [V, N, D] (view 0 clean) over the images that decoded."""

    x: torch.Tensor
    labels: torch.Tensor
    samples: list[Sample]
    hashes: list[str]
    problems: list[Problem]


@dataclass
class FrozenBackbone:
    name: str
    model: nn.Module
    head: str
    prep: Preprocessing
    device: torch.device
    dtype: torch.dtype | None
    weights: str  # weights_id(...)

    @classmethod
    def load(cls, name: str, *, pretrained: bool = True, weights_path: str | None = None, prep: Preprocessing | None = None,
             device: str | torch.device | None = None, amp: bool = True, seed: int = 0,
             on_download: Callable[[int, int], None] | None = None) -> FrozenBackbone:
        """Build the backbone (raises backbones.WeightsUnavailable when its weights cannot be had); `prep`: the
        pixels a plan decided (default: the weights' own transform)."""
        dev = device if isinstance(device, torch.device) else pick_device(device)
        model, head, own = backbones.build(name, 2, pretrained, weights_path, on_download=on_download)
        prep = prep or own
        model.eval().to(dev, memory_format=memory_format(dev))
        return cls(name, model, head, prep, dev, fast_dtype(dev) if amp else None,
                   weights_id(name, pretrained, weights_path, seed))

    @classmethod
    def for_plan(cls, plan: Plan, on_download: Callable[[int, int], None] | None = None) -> FrozenBackbone:
        """The frozen backbone a run of this plan embeds with: its weights, pixels, device and precision."""
        cfg = plan.config
        return cls.load(cfg.backbone, pretrained=cfg.pretrained, weights_path=cfg.weights_path, prep=plan.preprocessing,
                        device=cfg.device, amp=cfg.amp, seed=cfg.seed, on_download=on_download)

    @functools.cached_property
    def inference_model(self) -> nn.Module:
        """The headless copy that embeds (BatchNorm folded, activations fused, bf16 weights), made once: every split
        and view of this backbone shares it."""
        with headless(self.model, self.head):
            return inference_copy(self.model, self.dtype)

    def caches(self, views: int, augment: str, seed: int) -> list[EmbeddingCache]:
        return embedding_caches(self.name, self.weights, self.prep, self.dtype, views, augment, seed)

    def embed(self, samples: list[Sample], views: int = 1, augment: str = "light", seed: int = 0,
              phase: str = "images", progress: Progress | None = None,
              should_stop: Callable[[], bool] | None = None, known_hashes: dict[str, str] | None = None) -> Embedded:
        """V x N x D embeddings of `samples`; files that fail to decode are left out and reported.

        `known_hashes` (path -> content hash, e.g. from the scan) spares hashing those files again."""
        stop = should_stop or (lambda: False)
        known = known_hashes or {}
        hashes = []
        for i, s in enumerate(samples):
            hashes.append(known.get(s.path) or content_hash(s.path))
            if progress and s.path not in known and i % 64 == 0:
                progress(f"hashing {phase}", i, len(samples))
        if not samples:
            return Embedded(torch.empty(views, 0, 0), torch.empty(0, dtype=torch.long), [], [], [])
        views = views if augment != "none" else 1
        batcher = Batcher(self.prep, self.device, augment)
        gen = torch.Generator().manual_seed(seed)
        bad: set[int] = set()
        problems: list[Problem] = []

        def images(idx: torch.Tensor) -> torch.Tensor:
            u8, failed, found = decode_filled([samples[i] for i in idx.tolist()], self.prep)
            bad.update(idx[failed].tolist())
            problems.extend(found)
            return u8

        x = compute_views(
            lambda: self.inference_model, images, lambda v, u8: batcher.eval(u8) if v == 0 else batcher.train(u8, gen),
            len(samples), views, hashes, self.caches(views, augment, seed), self.dtype, inference_batch(self.device),
            progress=(lambda d, n: progress(f"embedding {phase}", d, n)) if progress else None, should_stop=stop,
        )
        keep = [i for i in range(len(samples)) if i not in bad]
        return Embedded(x[:, keep], torch.tensor([samples[i].label for i in keep], dtype=torch.long),
                        [samples[i] for i in keep], [hashes[i] for i in keep], problems)


def embed_dataset(ds: ImageDataset, backbone: FrozenBackbone, train_views: int = 1, augment: str = "light",
                  seed: int = 0, progress: Progress | None = None,
                  should_stop: Callable[[], bool] | None = None) -> dict[str, Embedded]:
    """Every split: `train_views` views of the training images (1 clean + augmented), the clean view of the rest."""
    return {split: backbone.embed(ds.split(split), train_views if split == "train" else 1, augment, seed, split,
                                  progress, should_stop)
            for split in ds.splits}
