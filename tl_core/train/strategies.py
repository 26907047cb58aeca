"""What differs between the ways a run trains, behind the hooks the one loop calls (Ultralytics' trainer hooks).

* `FittedHead`: frozen backbone; embeddings are computed once (cached, a few augmented views per image) and the
  new head is fitted to convergence on them (L-BFGS logistic regression, regularisation by cross-validation).
* `WholeNetwork`: fine-tuning (last K stages or full), or a frozen backbone run every step: images decoded once,
  batches augmented on the device, channels_last, autocast (bf16, or fp16 with a grad scaler), optional torch.compile.
* `Sweep`: another strategy's training steps with no validation, for the learning-rate finder's short run.

A strategy sees a narrow `Context` (the plan, the model, the device, reporting and stopping), never the trainer.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from tl_core.config import TrainConfig
from tl_core.data.balance import recall
from tl_core.data.pipeline import MAX_DECODED_BYTES, Batcher, batches, decode_filled, decode_many
from tl_core.data.sources import DatasetError, Problem, Sample
from tl_core.data.targets import Targets
from tl_core.devices import inference_batch, memory_format
from tl_core.features import frozen as frozen_features
from tl_core.features.cache import inference_copy
from tl_core.features.frozen import Embedded, FrozenBackbone
from tl_core.features.probe import ProbeResult, fit_head
from tl_core.formats import percent, seconds
from tl_core.models import backbones
from tl_core.models.backbones import Preprocessing
from tl_core.plan import Plan
from tl_core.train import distributed
from tl_core.train.events import Emitter, Logged, PhaseStarted
from tl_core.train.runs import save_state

MAX_DEVICE_IMAGE_BYTES = 2 * 2**30
FOLD_VALIDATION_PIXELS = 32 * 224 * 224  # below about 32 full-size images, folding costs more than it saves


class Stopped(Exception):
    """Raised inside the loop when a stop was requested; the run keeps what it has."""


def weights_id(cfg: TrainConfig) -> str:
    """What the backbone's weights are, for the embedding cache's key and run.json."""
    return frozen_features.weights_id(cfg.backbone, cfg.pretrained, cfg.weights_path, cfg.seed)


@dataclass
class Context:
    """What a strategy may use of a run: its plan, model, device, reporting and stopping; not the trainer."""

    plan: Plan
    model: nn.Module
    head: str
    classes: list[str]
    device: torch.device
    dtype: torch.dtype | None
    events: Emitter
    progress: Callable[[str], Callable[[int, int], None]]
    stop: threading.Event
    backbone_file: Path | None = None  # where a fitted head's frozen backbone is kept (None: a throw-away run)
    skipped: list[Problem] = field(default_factory=list)
    head_fit: dict | None = None  # how a fitted head was chosen, for the run's summary
    targets: Targets = field(default_factory=Targets)  # one class per picture, or a label set

    @property
    def config(self) -> TrainConfig:
        return self.plan.config

    @property
    def prep(self) -> Preprocessing:
        return self.plan.preprocessing

    def phase(self, phase: str, message: str) -> None:
        self.events.emit(PhaseStarted(phase, message))

    def stop_here(self) -> bool:
        """A stop this process may act on alone; under torchrun the ranks stop together, at the loop's sync."""
        return self.stop.is_set() and not distributed.active()

    def check_stop(self) -> None:
        if self.stop_here():
            raise Stopped

    def class_weight(self, device: torch.device | None = None) -> torch.Tensor | None:
        """The plan's per-class loss weights as a tensor, or None when every image counts alike."""
        weights = self.plan.class_weights
        return None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)


class Strategy:
    """Hooks the loop calls. The default step is a gradient step on a batch of training indices; `forward`
    returns (logits, labels) for it."""

    ctx: Context
    autocast: torch.dtype | None = None
    n_train: int = 0
    loss_weight: torch.Tensor | None = None  # per-class weights of the training loss (the plan's), on the device
    val_recall: list[float | None] | None = None  # per-class recall of the last validation (None: class not in val)
    has_rate: bool = True  # False: no training steps worth a rate (a fitted head): the rate is None, never a 0

    def prepare(self) -> None: ...
    def param_groups(self) -> list[dict]: ...
    def train_mode(self, epochs_done: int) -> None: ...
    def forward(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...
    def validate(self, check_stop: Callable[[], None]) -> tuple[float, float]: ...
    def state(self) -> dict[str, torch.Tensor]: ...
    def load(self, state: dict[str, torch.Tensor]) -> None: ...

    def batches(self, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        return batches(self.n_train, batch_size, True, gen)

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.n_train / batch_size)

    def step(self, idx: torch.Tensor, gen: torch.Generator, opt, sched, scaler, label_smoothing: float,
             device: torch.device) -> tuple[float, torch.Tensor, torch.Tensor]:
        """One optimiser step; returns (loss, logits, labels)."""
        with torch.autocast(device.type, dtype=self.autocast, enabled=self.autocast is not None):
            logits, y = self.forward(idx, gen)
            loss = self.ctx.targets.loss(logits, y, label_smoothing, weight=self.loss_weight)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        return loss.item(), logits, y


class ImageStore:
    """uint8 squares by index: all decoded up front when they fit in memory, else decoded per batch."""

    def __init__(self, samples: list[Sample], prep: Preprocessing, progress: Callable[[int, int], None]):
        self.samples, self.prep = samples, prep
        self.problems: list[Problem] = []
        if len(samples) * 3 * prep.resize**2 <= MAX_DECODED_BYTES:
            self.data, kept, self.problems = decode_many(samples, prep, progress)
            self.samples = [samples[i] for i in kept]
        else:
            self.data = None

    def __len__(self) -> int:
        return len(self.samples)

    def to(self, device: torch.device) -> None:
        """On a GPU, small decoded sets live in its memory: no host-to-device copy per step."""
        if self.data is not None and device.type == "cuda" and self.data.numel() <= MAX_DEVICE_IMAGE_BYTES:
            self.data = self.data.to(device)

    def labels(self, targets: Targets, num_classes: int) -> torch.Tensor:
        return targets.tensor([s.target for s in self.samples], num_classes)

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        if self.data is not None:
            return self.data[idx.to(self.data.device)]
        u8, _, problems = decode_filled([self.samples[i] for i in idx.tolist()], self.prep)
        self.problems += [p for p in problems if p not in self.problems]  # files that went bad mid-run, once
        return u8


class WholeNetwork(Strategy):
    def __init__(self, ctx: Context, train: list[Sample], val: list[Sample]):
        self.ctx, self.train_samples, self.val_samples = ctx, train, val

    def prepare(self) -> None:
        ctx, cfg = self.ctx, self.ctx.config
        ctx.phase("decoding", "Decoding images once into memory")
        # under torchrun each rank decodes and augments only its shard; one process has all of them
        self.train_store = ImageStore(distributed.shard(self.train_samples), ctx.prep, ctx.progress("decoding train images"))
        self.val_store = ImageStore(distributed.shard(self.val_samples), ctx.prep, ctx.progress("decoding val images"))
        ctx.skipped += [p for problems in distributed.gather(self.train_store.problems + self.val_store.problems)
                        for p in problems]
        fewest = -distributed.all_max(-len(self.train_store))
        n_train, n_val = distributed.all_sum(len(self.train_store), len(self.val_store))
        if not fewest or not n_val:
            raise DatasetError("No decodable images left in the train or val split." + (
                f" Each of the {distributed.size()} processes needs at least one training image." if distributed.active() else ""))
        self.n_train = int(n_train)
        self.n_epoch = distributed.all_max(len(self.train_store))  # what each rank walks per epoch: the longest shard
        model = ctx.model
        backbones.apply_strategy(model, ctx.head, cfg.strategy, cfg.finetune_stages)
        model.to(ctx.device, memory_format=memory_format(ctx.device))
        for store in (self.train_store, self.val_store):
            store.to(ctx.device)
        self.eval_net = torch.compile(model) if cfg.compile else model
        self.net = distributed.wrap(self.eval_net, ctx.device)  # DDP under torchrun; validation needs no gradient sync
        self.batcher = Batcher(ctx.prep, ctx.device, cfg.augment)
        self.y_train, self.y_val = (store.labels(ctx.targets, len(ctx.classes)) for store in (self.train_store, self.val_store))
        self.loss_weight = ctx.class_weight(ctx.device)
        self.autocast = ctx.dtype
        sizes = ctx.plan.sizes
        if len(set(sizes)) > 1:
            ctx.events.emit(Logged(f"Progressive resizing: training images of {' / '.join(map(str, sizes))} px by epoch "
                                   f"(validation at {ctx.prep.crop} px)."))

    def param_groups(self) -> list[dict]:
        cfg, model = self.ctx.config, self.ctx.model
        head_params = list(model.get_submodule(self.ctx.head).parameters())
        head_ids = {id(p) for p in head_params}
        body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
        groups = [{"params": head_params, "lr": cfg.head_lr}]
        if body:
            groups.append({"params": body, "lr": cfg.head_lr * cfg.backbone_lr_factor})
        return groups

    def train_mode(self, epochs_done: int) -> None:
        self.ctx.model.train()
        cfg = self.ctx.config  # statistics worth keeping come with weights: from scratch they are 0 and 1
        backbones.freeze_batchnorm(self.ctx.model, cfg.keep_bn_statistics and (cfg.pretrained or bool(cfg.weights_path)))
        sizes = self.ctx.plan.sizes
        self.size = sizes[min(epochs_done, len(sizes) - 1)]  # epochs finished so far, resume included

    def batches(self, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        """A shuffled pass over this rank's images, topped up with a few repeats to the longest shard, so every
        rank takes the same steps (DDP needs it); in one process exactly the images, once each."""
        order = torch.randperm(len(self.train_store), generator=gen)
        return iter(order.repeat(math.ceil(self.n_epoch / len(order)))[: self.n_epoch].split(batch_size))

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.n_epoch / batch_size)

    def forward(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.batcher.train(self.train_store.get(idx), gen, self.size)
        return self.net(x), self.y_train[idx].to(self.ctx.device, non_blocking=True)

    def validate(self, check_stop: Callable[[], None]) -> tuple[float, float]:
        """At full size, on an inference copy (BatchNorm folded, bf16 weights) when the validation set is big enough
        to repay the fold (a fraction of a second): 1.7x the images/s of the training graph in eval mode on CPU."""
        ctx, store = self.ctx, self.val_store
        self.eval_net.eval()
        folds = not ctx.config.compile and len(store) * ctx.prep.crop**2 >= FOLD_VALIDATION_PIXELS
        net = inference_copy(ctx.model, ctx.dtype) if folds else self.eval_net
        loss_sum, correct, counted = 0.0, 0, []
        with torch.inference_mode(), torch.autocast(ctx.device.type, dtype=ctx.dtype, enabled=ctx.dtype is not None):
            for idx in batches(len(store), inference_batch(ctx.device), False):
                check_stop()
                logits = net(self.batcher.eval(store.get(idx))).float()
                y = self.y_val[idx].to(ctx.device)
                loss_sum += ctx.targets.loss(logits, y, reduction="sum").item()
                correct += ctx.targets.correct(logits, y).sum().item()
                hits, support = ctx.targets.recall_counts(logits, y)
                counted = [a + b for a, b in zip(counted, hits + support)] if counted else hits + support
        k = len(ctx.classes)
        loss_sum, correct, n, *counts = distributed.all_sum(loss_sum, correct, len(store), *(counted or [0] * 2 * k))
        self.val_recall = recall(counts[:k], counts[k:])  # every rank: the same figures
        return loss_sum / n, correct / n

    def state(self) -> dict[str, torch.Tensor]:
        return self.ctx.model.state_dict()

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.ctx.model.load_state_dict(state)


class FittedHead(Strategy):
    """Frozen backbone: embed every image once (clean view + augmented views, cached by content), then fit the new
    head to convergence: multinomial logistic regression by L-BFGS, its L2 strength (and whether the augmented
    views help) chosen by k-fold cross-validation on the training split only (`tl_core.features.probe`). The loop
    runs one epoch (the plan says so) whose single step puts the fitted solution in place."""

    has_rate = False

    def __init__(self, ctx: Context, train: list[Sample], val: list[Sample], hashes: dict[str, str]):
        self.ctx, self.train_samples, self.val_samples, self.hashes = ctx, train, val, hashes

    def prepare(self) -> None:
        ctx, cfg = self.ctx, self.ctx.config
        ctx.model.to(ctx.device, memory_format=memory_format(ctx.device))
        frozen = FrozenBackbone(cfg.backbone, ctx.model, ctx.head, ctx.prep, ctx.device, ctx.dtype, weights_id(cfg))
        reporters: dict[str, Callable[[int, int], None]] = {}

        def progress(phase: str, done: int, total: int) -> None:
            reporters.setdefault(phase, ctx.progress(phase))(done, total)

        ctx.phase("embedding", "Computing embeddings once (cached for later runs)")
        try:
            train, val = (self._embed(frozen, samples, n, split, progress)
                          for samples, n, split in ((self.train_samples, ctx.plan.views, "train"), (self.val_samples, 1, "val")))
        except InterruptedError:
            raise Stopped from None
        ctx.skipped += train.problems + val.problems
        self.x_train, self.x_val = train.x, val.x[0]
        self.y_train, self.y_val = (ctx.targets.tensor([s.target for s in e.samples], len(ctx.classes)) for e in (train, val))
        self.n_train = len(self.y_train)
        self.loss_weight = ctx.class_weight(ctx.device)
        self.layer: nn.Linear = ctx.model.get_submodule(ctx.head).float().to(ctx.device)
        self.prefix = ctx.head + "."
        if distributed.is_main() and ctx.backbone_file:
            save_state(ctx.backbone_file, {k: v for k, v in ctx.model.state_dict().items() if not k.startswith(self.prefix)})
        self.x_train, self.y_train, self.x_val, self.y_val = (
            v.to(ctx.device) for v in (self.x_train, self.y_train, self.x_val, self.y_val))
        self.fit = distributed.on_main(self._fit)  # one fit on rank 0, handed to every rank

    def _embed(self, frozen: FrozenBackbone, samples: list[Sample], views: int, split: str,
               progress: Callable[[str, int, int], None]) -> Embedded:
        """Embed `samples`; under torchrun each rank embeds its shard and every rank gets all of them back in
        the samples' order, so the head is fitted on what one process would have embedded."""
        ctx, cfg = self.ctx, self.ctx.config
        mine = distributed.shard(list(range(len(samples))))
        part = frozen.embed([samples[i] for i in mine], views, cfg.augment, cfg.seed, f"{split} images", progress,
                            ctx.stop_here, self.hashes)
        if not distributed.active():
            return part
        parts = distributed.gather(part)
        where = {s.path: i for i, s in enumerate(samples)}
        rows = sorted(((where[s.path], e, j) for e in parts for j, s in enumerate(e.samples)), key=lambda r: r[0])
        return Embedded(torch.stack([e.x[:, j] for _, e, j in rows], 1), torch.stack([e.labels[j] for _, e, j in rows]),
                        [e.samples[j] for _, e, j in rows], [e.hashes[j] for _, e, j in rows],
                        [p for e in parts for p in e.problems])

    def _fit(self) -> ProbeResult:
        ctx = self.ctx
        ctx.phase("fitting", "Fitting the head to convergence (L-BFGS; L2 strength by cross-validation on the training split)")
        report = ctx.progress("fitting the head (L-BFGS iterations)")
        try:
            fit = fit_head(self.x_train.cpu(), self.y_train.cpu(), len(ctx.classes), seed=ctx.config.seed,
                           class_weight=ctx.class_weight(), should_stop=ctx.stop.is_set,
                           on_iteration=lambda s: report(s.iteration, s.max_iterations), targets=ctx.targets)
        except InterruptedError:
            raise Stopped from None
        method = "L-BFGS logistic regression" + (", one per label" if ctx.targets.multi_label else "")
        ctx.head_fit = {"method": method, "l2": fit.l2, "cv_accuracy": round(fit.cv_accuracy, 4),
                        "views": fit.views, "iterations": fit.iterations, "seconds": round(fit.seconds, 2)}
        figure = "balanced accuracy" if ctx.plan.class_weights else ctx.targets.accuracy_name
        ctx.events.emit(Logged(f"Head fitted: L2 {fit.l2:g} chosen by cross-validation on the training split (CV {figure} "
                               f"{percent(fit.cv_accuracy)}), {'clean and augmented views' if fit.views > 1 else 'clean view only'}, "
                               f"{fit.iterations} L-BFGS iterations in {seconds(fit.seconds)}."))
        return fit

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.layer.parameters()), "lr": self.ctx.config.head_lr}]

    def train_mode(self, epochs_done: int) -> None:
        self.layer.eval()

    def batches(self, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        yield torch.arange(self.n_train)

    def steps_per_epoch(self, batch_size: int) -> int:
        return 1

    def step(self, idx, gen, opt, sched, scaler, label_smoothing, device) -> tuple[float, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            self.layer.weight.copy_(self.fit.weight)
            self.layer.bias.copy_(self.fit.bias)
            logits = self.layer(self.x_train[0])
        return self.ctx.targets.loss(logits, self.y_train, weight=self.loss_weight).item(), logits, self.y_train

    def validate(self, check_stop: Callable[[], None]) -> tuple[float, float]:
        targets = self.ctx.targets
        with torch.no_grad():
            logits = self.layer(self.x_val)
            self.val_recall = recall(*targets.recall_counts(logits, self.y_val))
            return targets.loss(logits, self.y_val).item(), targets.correct(logits, self.y_val).float().mean().item()

    def state(self) -> dict[str, torch.Tensor]:
        return {self.prefix + k: v for k, v in self.layer.state_dict().items()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.layer.load_state_dict({k.removeprefix(self.prefix): v for k, v in state.items() if k.startswith(self.prefix)})


class Sweep(Strategy):
    """`steps` training steps of another strategy in one epoch, repeating its passes over the images as needed,
    with nothing validated: the learning-rate finder's short run through the one loop."""

    def __init__(self, inner: Strategy, steps: int):
        self.inner, self.steps = inner, steps

    def prepare(self) -> None:
        self.inner.prepare()
        self.n_train, self.autocast = self.inner.n_train, self.inner.autocast

    def param_groups(self) -> list[dict]:
        return self.inner.param_groups()

    def train_mode(self, epochs_done: int) -> None:
        self.inner.train_mode(epochs_done)

    def batches(self, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        passes = (self.inner.batches(batch_size, gen) for _ in itertools.count())
        return itertools.islice(itertools.chain.from_iterable(passes), self.steps)

    def steps_per_epoch(self, batch_size: int) -> int:
        return self.steps

    def step(self, idx, gen, opt, sched, scaler, label_smoothing, device) -> tuple[float, torch.Tensor, torch.Tensor]:
        return self.inner.step(idx, gen, opt, sched, scaler, label_smoothing, device)

    def validate(self, check_stop: Callable[[], None]) -> tuple[float, float]:
        return math.nan, math.nan

    def state(self) -> dict[str, torch.Tensor]:
        return {}


def choose(ctx: Context, train: list[Sample], val: list[Sample], hashes: dict[str, str]) -> Strategy:
    """The path the plan chose: a fitted head on cached embeddings, or the network trained by gradient steps."""
    return FittedHead(ctx, train, val, hashes) if ctx.plan.fitted_head else WholeNetwork(ctx, train, val)
