"""Fine-tune a backbone on a dataset: exactly one training loop, varied by a small per-strategy object.

`Trainer._loop` owns the epochs, steps, optimiser, schedule, stop checks, ETA, checkpoints and early stopping.
A strategy supplies what differs (Ultralytics' BaseTrainer hooks, nanoGPT's single loop):
* `FittedHead`: frozen backbone; embeddings are computed once (cached, a few augmented views per image) and the
  new head is fitted to convergence on them (L-BFGS logistic regression, regularisation by cross-validation).
* `WholeNetwork`: fine-tuning (last K stages or full), or a frozen backbone run every step: images decoded once,
  batches augmented on the device, channels_last, autocast (bf16, or fp16 with a grad scaler), optional torch.compile.
Events are typed (tl_core.train.events); the run folder (tl_core.train.recorder), the CLI and the dashboard are listeners.
Under torchrun the same loop runs in every process (tl_core.train.distributed): rank 0 scans, writes the run folder and
emits the events; each rank decodes its shard; losses, counts and stop requests are all-reduced, so every rank
takes the same decisions.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tl_core import paths, plan
from tl_core.config import TrainConfig
from tl_core.data.pipeline import MAX_DECODED_BYTES, Batcher, batches, decode_filled, decode_many, epoch_sizes
from tl_core.data.scan import check_files, median_short_side, scan
from tl_core.data.sources import DatasetError, DatasetSpec, ImageDataset, Problem, Sample
from tl_core.devices import fast_dtype, inference_batch, is_out_of_memory, memory_format, needs_grad_scaler, pick_device
from tl_core.features import frozen as dataset_embeddings
from tl_core.features.cache import EmbeddingCache, inference_copy
from tl_core.features.frozen import Embedded, FrozenBackbone
from tl_core.features.probe import ProbeResult, fit_head
from tl_core.formats import percent, seconds
from tl_core.models import backbones
from tl_core.train import distributed
from tl_core.train.events import (
    Emitter,
    EpochEnded,
    EpochRow,
    Listener,
    Logged,
    PhaseProgress,
    PhaseStarted,
    RunEnded,
    RunFailed,
    RunResult,
    RunStarted,
    StepEnded,
)
from tl_core.train.recorder import RunRecorder
from tl_core.train.runs import (
    RunBusy,
    RunLock,
    RunStatus,
    load_run,
    load_trainer_state,
    new_run,
    save_state,
    save_trainer_state,
    write_json,
)

__all__ = ["RunResult", "Trainer", "TrainingError", "resume", "train"]



def stopped_reason(finished: int, planned: int) -> str:
    """A stop in words that agree with the sidebar's "epoch N/M": which epochs were finished, never "after epoch 0"."""
    if not finished:
        return "stopped by request during epoch 1, before any epoch finished"
    return f"stopped by request after epoch {finished} of {planned}"

class Stopped(Exception):
    """Raised inside the loop when a stop was requested; the run keeps what it has."""


class TrainingError(RuntimeError):
    def __init__(self, message: str, suggestion: str, run_dir: str | None = None):
        super().__init__(message)
        self.suggestion, self.run_dir = suggestion, run_dir

    def __reduce__(self):  # whole across processes: rank 0's refusal is raised on every rank (distributed.on_main)
        return TrainingError, (str(self), self.suggestion, self.run_dir)


def explain(exc: BaseException, config: TrainConfig, has_checkpoint: bool = False) -> tuple[str, str]:
    """An error as (message, what to do about it) for people, not a traceback."""
    if is_out_of_memory(exc):
        return (f"Out of memory with batch size {config.batch_size}.",
                "Lower the batch size or image size, choose a smaller backbone, or use feature extraction; then start again.")
    if isinstance(exc, backbones.WeightsUnavailable):
        return str(exc), "Choose a backbone marked 'cached', add the weight file, or train from scratch."
    if isinstance(exc, DatasetError):
        return str(exc), "Check the dataset's problems (`python -m tl_core scan DATA` lists them) and fix the folder layout."
    if isinstance(exc, RunBusy):
        return str(exc), "Wait for that process to finish, or stop it first."
    if isinstance(exc, ValueError):
        return str(exc), "Check the settings and the data."
    kept = "the run keeps its finished epochs and best checkpoint" if has_checkpoint else "no epoch had finished, so nothing was kept"
    return f"{type(exc).__name__}: {exc}", f"See the log; {kept}."


def check_trainable(ds: ImageDataset) -> None:
    """Refuse, before any run folder exists, data that cannot train a classifier."""
    train, val = ds.split("train"), ds.split("val")
    if len({s.label for s in train}) < 2:
        raise DatasetError("Training needs usable images of at least two classes in the training split.")
    if not val:
        raise DatasetError("There are no usable validation images; add a val/ folder or use a random split.")


def weights_id(cfg: TrainConfig) -> str:
    """What the backbone's weights are, for the embedding cache's key and run.json."""
    return dataset_embeddings.weights_id(cfg.backbone, cfg.pretrained, cfg.weights_path, cfg.seed)


def embedding_caches(cfg: TrainConfig, prep: backbones.Preprocessing, dtype: torch.dtype | None) -> list[EmbeddingCache]:
    views = cfg.feature_views if cfg.augment != "none" else 1
    return dataset_embeddings.embedding_caches(cfg.backbone, weights_id(cfg), prep, dtype, views, cfg.augment, cfg.seed)


def uses_cached_embeddings(cfg: TrainConfig, model: nn.Module, head: str) -> bool:
    return cfg.strategy == "features" and cfg.embedding_cache and isinstance(model.get_submodule(head), nn.Linear)


# ---------------------------------------------------------------- strategies: what differs between paths


class Strategy:
    """Hooks the loop calls. The default step is a gradient step on a batch of training indices; `forward`
    returns (logits, labels) for it."""

    autocast: torch.dtype | None = None
    n_train: int = 0
    epochs: int | None = None  # None: the config's epochs; a strategy that solves its problem outright says 1
    has_rate: bool = True  # False: no training steps worth a rate (a fitted head), so none is shown

    def prepare(self, trainer: Trainer) -> None: ...
    def param_groups(self) -> list[dict]: ...
    def train_mode(self) -> None: ...
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
            loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        return loss.item(), logits, y


MAX_DEVICE_IMAGE_BYTES = 2 * 2**30
FOLD_VALIDATION_PIXELS = 32 * 224 * 224  # below about 32 full-size images, folding costs more than it saves


class ImageStore:
    """uint8 squares by index: all decoded up front when they fit in memory, else decoded per batch."""

    def __init__(self, samples: list[Sample], size: int, progress: Callable[[int, int], None]):
        self.samples, self.size = samples, size
        self.problems: list[Problem] = []
        if len(samples) * 3 * size * size <= MAX_DECODED_BYTES:
            self.data, kept, self.problems = decode_many(samples, size, progress)
            self.samples = [samples[i] for i in kept]
        else:
            self.data = None

    def __len__(self) -> int:
        return len(self.samples)

    def to(self, device: torch.device) -> None:
        """On a GPU, small decoded sets live in its memory: no host-to-device copy per step."""
        if self.data is not None and device.type == "cuda" and self.data.numel() <= MAX_DEVICE_IMAGE_BYTES:
            self.data = self.data.to(device)

    def labels(self) -> torch.Tensor:
        return torch.tensor([s.label for s in self.samples])

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        if self.data is not None:
            return self.data[idx.to(self.data.device)]
        u8, _, problems = decode_filled([self.samples[i] for i in idx.tolist()], self.size)
        self.problems += [p for p in problems if p not in self.problems]  # files that went bad mid-run, once
        return u8


class WholeNetwork(Strategy):
    def __init__(self, trainer: Trainer, train: list[Sample], val: list[Sample]):
        self.t, self.train_samples, self.val_samples = trainer, train, val

    def prepare(self, trainer: Trainer) -> None:
        t, cfg = self.t, self.t.config
        t.phase("decoding", "Decoding images once into memory")
        # under torchrun each rank decodes and augments only its shard; one process has all of them
        self.train_store = ImageStore(distributed.shard(self.train_samples), t.prep.resize, t.progress("decoding train images"))
        self.val_store = ImageStore(distributed.shard(self.val_samples), t.prep.resize, t.progress("decoding val images"))
        t.skipped += [p for problems in distributed.gather(self.train_store.problems + self.val_store.problems)
                      for p in problems]
        fewest = -distributed.all_max(-len(self.train_store))
        n_train, n_val = distributed.all_sum(len(self.train_store), len(self.val_store))
        if not fewest or not n_val:
            raise DatasetError("No decodable images left in the train or val split." + (
                f" Each of the {distributed.size()} processes needs at least one training image." if distributed.active() else ""))
        self.n_train = int(n_train)
        self.n_epoch = distributed.all_max(len(self.train_store))  # what each rank walks per epoch: the longest shard
        model, head = t.model, t.head
        backbones.apply_strategy(model, head, cfg.strategy, cfg.finetune_stages)
        model.to(t.device, memory_format=memory_format(t.device))
        for store in (self.train_store, self.val_store):
            store.to(t.device)
        self.eval_net = torch.compile(model) if cfg.compile else model
        self.net = distributed.wrap(self.eval_net, t.device)  # DDP under torchrun; validation needs no gradient sync
        self.batcher = Batcher(t.prep, t.device, cfg.augment)
        self.y_train, self.y_val = self.train_store.labels(), self.val_store.labels()
        self.autocast = t.dtype
        resize = cfg.progressive_resize if cfg.strategy != "features" else 1.0  # a frozen backbone gains nothing
        self.sizes = epoch_sizes(t.prep, t.epochs, resize, cfg.augment)
        if len(set(self.sizes)) > 1:
            t.events.emit(Logged(f"Progressive resizing: training images of {' / '.join(map(str, self.sizes))} px by epoch "
                                 f"(validation at {t.prep.crop} px)."))

    def param_groups(self) -> list[dict]:
        cfg, model = self.t.config, self.t.model
        head_params = list(model.get_submodule(self.t.head).parameters())
        head_ids = {id(p) for p in head_params}
        body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
        groups = [{"params": head_params, "lr": cfg.head_lr}]
        if body:
            groups.append({"params": body, "lr": cfg.head_lr * cfg.backbone_lr_factor})
        return groups

    def train_mode(self) -> None:
        self.t.model.train()
        cfg = self.t.config  # statistics worth keeping come with weights: from scratch they are 0 and 1
        backbones.freeze_batchnorm(self.t.model, cfg.keep_bn_statistics and (cfg.pretrained or bool(cfg.weights_path)))
        self.size = self.sizes[min(self.t.epoch, len(self.sizes) - 1)]  # t.epoch: epochs finished (resume included)

    def batches(self, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        """A shuffled pass over this rank's images, topped up with a few repeats to the longest shard, so every
        rank takes the same steps (DDP needs it); in one process exactly the images, once each."""
        order = torch.randperm(len(self.train_store), generator=gen)
        return iter(order.repeat(math.ceil(self.n_epoch / len(order)))[: self.n_epoch].split(batch_size))

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.n_epoch / batch_size)

    def forward(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.batcher.train(self.train_store.get(idx), gen, self.size)
        return self.net(x), self.y_train[idx].to(self.t.device, non_blocking=True)

    def validate(self, check_stop: Callable[[], None]) -> tuple[float, float]:
        """At full size, on an inference copy (BatchNorm folded, bf16 weights) when the validation set is big enough
        to repay the fold (a fraction of a second): 1.7x the images/s of the training graph in eval mode on CPU."""
        t, store = self.t, self.val_store
        self.eval_net.eval()
        folds = not t.config.compile and len(store) * t.prep.crop**2 >= FOLD_VALIDATION_PIXELS
        net = inference_copy(t.model, t.dtype) if folds else self.eval_net
        loss_sum, correct = 0.0, 0
        with torch.inference_mode(), torch.autocast(t.device.type, dtype=t.dtype, enabled=t.dtype is not None):
            for idx in batches(len(store), inference_batch(t.device), False):
                check_stop()
                logits = net(self.batcher.eval(store.get(idx))).float()
                y = self.y_val[idx].to(t.device)
                loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(1) == y).sum().item()
        loss_sum, correct, n = distributed.all_sum(loss_sum, correct, len(store))  # every rank: the same figures
        return loss_sum / n, correct / n

    def state(self) -> dict[str, torch.Tensor]:
        return self.t.model.state_dict()

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.t.model.load_state_dict(state)


class FittedHead(Strategy):
    """Frozen backbone: embed every image once (clean view + augmented views, cached by content), then fit the new
    head to convergence: multinomial logistic regression by L-BFGS, its L2 strength (and whether the augmented
    views help) chosen by k-fold cross-validation on the training split only (`tl_core.features.probe`). The loop
    runs one epoch whose single step puts the fitted solution in place: nothing is left to a few epochs of SGD."""

    epochs = 1
    has_rate = False

    def __init__(self, trainer: Trainer, train: list[Sample], val: list[Sample], hashes: dict[str, str]):
        self.t, self.train_samples, self.val_samples, self.hashes = trainer, train, val, hashes

    def prepare(self, trainer: Trainer) -> None:
        t, cfg = self.t, self.t.config
        t.model.to(t.device, memory_format=memory_format(t.device))
        frozen = FrozenBackbone(cfg.backbone, t.model, t.head, t.prep, t.device, t.dtype, weights_id(cfg))
        reporters: dict[str, Callable[[int, int], None]] = {}

        def progress(phase: str, done: int, total: int) -> None:
            reporters.setdefault(phase, t.progress(phase))(done, total)

        t.phase("embedding", "Computing embeddings once (cached for later runs)")
        views = cfg.feature_views if cfg.augment != "none" else 1
        try:
            train, val = (self._embed(frozen, samples, n, split, progress)
                          for samples, n, split in ((self.train_samples, views, "train"), (self.val_samples, 1, "val")))
        except InterruptedError:
            raise Stopped from None
        t.skipped += train.problems + val.problems
        self.x_train, self.y_train, self.x_val, self.y_val = train.x, train.labels, val.x[0], val.labels
        self.n_train = len(self.y_train)
        self.layer: nn.Linear = t.model.get_submodule(t.head).float().to(t.device)
        self.prefix = t.head + "."
        if distributed.is_main():
            save_state(t.run.dir / "backbone.safetensors",
                       {k: v for k, v in t.model.state_dict().items() if not k.startswith(self.prefix)})
        self.x_train, self.y_train, self.x_val, self.y_val = (
            v.to(t.device) for v in (self.x_train, self.y_train, self.x_val, self.y_val))
        self.fit = distributed.on_main(self._fit)  # one fit on rank 0, handed to every rank

    def _embed(self, frozen: FrozenBackbone, samples: list[Sample], views: int, split: str,
               progress: Callable[[str, int, int], None]) -> Embedded:
        """Embed `samples`; under torchrun each rank embeds its shard and every rank gets all of them back in
        the samples' order, so the head is fitted on what one process would have embedded."""
        t, cfg = self.t, self.t.config
        mine = distributed.shard(list(range(len(samples))))
        part = frozen.embed([samples[i] for i in mine], views, cfg.augment, cfg.seed, f"{split} images", progress,
                            t.stop_here, self.hashes)
        if not distributed.active():
            return part
        parts = distributed.gather(part)
        where = {s.path: i for i, s in enumerate(samples)}
        rows = sorted(((where[s.path], e, j) for e in parts for j, s in enumerate(e.samples)), key=lambda r: r[0])
        return Embedded(torch.stack([e.x[:, j] for _, e, j in rows], 1), torch.stack([e.labels[j] for _, e, j in rows]),
                        [e.samples[j] for _, e, j in rows], [e.hashes[j] for _, e, j in rows],
                        [p for e in parts for p in e.problems])

    def _fit(self) -> ProbeResult:
        t = self.t
        t.phase("fitting", "Fitting the head to convergence (L-BFGS; L2 strength by cross-validation on the training split)")
        report = t.progress("fitting the head (L-BFGS iterations)")
        try:
            fit = fit_head(self.x_train.cpu(), self.y_train.cpu(), len(t.classes), seed=t.config.seed,
                           should_stop=t.stop.is_set, on_iteration=lambda s: report(s.iteration, s.max_iterations))
        except InterruptedError:
            raise Stopped from None
        t.head_fit = {"method": "L-BFGS logistic regression", "l2": fit.l2, "cv_accuracy": round(fit.cv_accuracy, 4),
                      "views": fit.views, "iterations": fit.iterations, "seconds": round(fit.seconds, 2)}
        t.run.write_summary(head_fit=t.head_fit)  # how the head was fitted, shown with the run
        t.events.emit(Logged(f"Head fitted: L2 {fit.l2:g} chosen by cross-validation on the training split (CV accuracy "
                             f"{percent(fit.cv_accuracy)}), {'clean and augmented views' if fit.views > 1 else 'clean view only'}, "
                             f"{fit.iterations} L-BFGS iterations in {seconds(fit.seconds)}."))
        return fit

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.layer.parameters()), "lr": self.t.config.head_lr}]

    def train_mode(self) -> None:
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
        return F.cross_entropy(logits, self.y_train).item(), logits, self.y_train

    def validate(self, check_stop: Callable[[], None]) -> tuple[float, float]:
        with torch.no_grad():
            logits = self.layer(self.x_val)
            return F.cross_entropy(logits, self.y_val).item(), (logits.argmax(1) == self.y_val).float().mean().item()

    def state(self) -> dict[str, torch.Tensor]:
        return {self.prefix + k: v for k, v in self.layer.state_dict().items()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.layer.load_state_dict({k.removeprefix(self.prefix): v for k, v in state.items() if k.startswith(self.prefix)})


# ---------------------------------------------------------------- the trainer


class Trainer:
    def __init__(self, config: TrainConfig, listeners: list[Listener] | tuple = (), stop: threading.Event | None = None):
        self.config = plan.check(config)
        self.events = Emitter(listeners if distributed.is_main() else ())  # under torchrun rank 0 alone reports
        self.stop = stop or threading.Event()
        self.device = distributed.device_for(pick_device(config.device))
        self.dtype = fast_dtype(self.device) if config.amp else None
        self.skipped: list[Problem] = []
        self.run = None

    # -- entry points

    def fit(self, data: str | DatasetSpec, runs_dir: str | Path | None = None) -> RunResult:
        """Check the data and the weights first (a refused run leaves no folder), then train in a new run.
        Under torchrun rank 0 does both and creates the folder; every rank then trains on its split."""
        spec = data if isinstance(data, DatasetSpec) else DatasetSpec(data)
        with distributed.process_group(self.device):
            run, ds, skipped, hashes, prep = distributed.on_main(lambda: self._new_run(spec, runs_dir))
            self._follow(len(ds.classes), prep)
            return self._guarded(run, ds, skipped, hashes, resume=False)

    def resume(self, run_dir: str | Path) -> RunResult:
        with distributed.process_group(self.device):
            run, ds, gone, hashes, prep = distributed.on_main(lambda: self._reopen(run_dir))
            self._follow(len(ds.classes), prep)
            return self._guarded(run, ds, gone, hashes, resume=True)

    def _new_run(self, spec: DatasetSpec, runs_dir: str | Path | None) -> tuple:
        """The scan (the one split every rank uses), the model, then the new run folder with run.json and split.json."""
        try:
            report = scan(spec, self.progress("checking images"))
            ds = report.dataset
            check_trainable(ds)
            self._build(len(ds.classes))
            self.prep = self.prep.for_image_side(median_short_side([s.path for s in ds.samples]))
        except Exception as e:
            raise self._failed(e) from e
        run = new_run(runs_dir or paths.runs_dir(), self.config.backbone)
        write_json(run.dir / "run.json", {
            "id": run.id, "created": time.time(), "config": self.config.to_dict(),
            "dataset": {**spec.to_dict(), "name": ds.name, "root": ds.root, "split_source": ds.split_source},
            "classes": ds.classes, "device": str(self.device), "dtype": str(self.dtype), "head": self.head,
            "preprocessing": asdict(self.prep), "weights": weights_id(self.config), "processes": distributed.size(),
        })
        write_json(run.dir / "split.json", {sp: [[s.path, s.label] for s in ds.split(sp)] for sp in ds.splits})
        return run, ds, report.skipped, report.hashes(), self.prep

    def _follow(self, num_classes: int, prep: backbones.Preprocessing) -> None:
        """The other ranks build the same model (rank 0 has fetched its weights) with rank 0's preprocessing."""
        if not distributed.is_main():
            self._build(num_classes)
            self.prep = prep

    def _reopen(self, run_dir: str | Path) -> tuple:
        """A run's own split, with the files that are gone or broken now left out."""
        run = load_run(run_dir)
        info = run.info
        items = [(p, y, sp) for sp in ("train", "val", "test") for p, y in run.split(sp)]
        checks = check_files(info["dataset"]["root"], [p for p, _, _ in items], self.progress("checking images"))
        gone = [Problem(p, checks[p].reason) for p, _, _ in items if not checks[p].usable]
        ds = ImageDataset(info["dataset"]["name"], info["dataset"]["root"], info["classes"],
                          [Sample(p, y, sp) for p, y, sp in items if checks[p].usable])
        try:
            check_trainable(ds)
            self._build(len(ds.classes))
            self.prep = backbones.Preprocessing(**info["preprocessing"])  # exactly what the run was trained with
        except Exception as e:
            raise self._failed(e, str(run.dir)) from e
        return run, ds, gone, {p: c.hash for p, c in checks.items() if c.usable}, self.prep

    # -- helpers the strategies call

    def phase(self, phase: str, message: str) -> None:
        self.events.emit(PhaseStarted(phase, message))

    def progress(self, phase: str) -> Callable[[int, int], None]:
        t0 = time.perf_counter()

        def report(done: int, total: int) -> None:
            if self.run is not None:  # before the run exists (scan, weights) a stop simply waits for it
                self.check_stop()
            elapsed = time.perf_counter() - t0
            rate = done / elapsed if done and elapsed > 0.2 else None
            self.events.emit(PhaseProgress(phase, done, total, rate))

        return report

    def stop_here(self) -> bool:
        """A stop this process may act on alone; under torchrun the ranks stop together, at `sync_stop`."""
        return self.stop.is_set() and not distributed.active()

    def check_stop(self) -> None:
        if self.stop_here():
            raise Stopped

    def sync_stop(self) -> None:
        """Before every step: stop on every rank when any of them (rank 0, which the job manager asks) was asked."""
        if distributed.any_rank(self.stop.is_set()):
            raise Stopped

    # -- the run

    def _build(self, num_classes: int) -> None:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.phase("weights", f"Loading {cfg.backbone} weights")
        self.model, self.head, prep = backbones.build(cfg.backbone, num_classes, cfg.pretrained, cfg.weights_path,
                                                      on_download=self.progress("downloading weights"))
        self.prep = prep.at_size(cfg.image_size) if cfg.image_size else prep

    def _failed(self, e: BaseException, run_dir: str | None = None) -> TrainingError:
        message, suggestion = explain(e, self.config)
        self.events.emit(RunFailed(message, suggestion, run_dir))
        return TrainingError(message, suggestion, run_dir)

    def _strategy(self, ds: ImageDataset, hashes: dict[str, str]) -> Strategy:
        train, val = ds.split("train"), ds.split("val")
        if uses_cached_embeddings(self.config, self.model, self.head):
            return FittedHead(self, train, val, hashes)
        return WholeNetwork(self, train, val)

    def _guarded(self, run, ds: ImageDataset, skipped: list[Problem], hashes: dict[str, str], resume: bool) -> RunResult:
        """One writer per run: a second resume of a run that is still training is refused, not interleaved.
        Under torchrun rank 0 holds the lock and its refusal stops every rank."""
        lock = RunLock(run.dir)

        def take() -> None:
            try:
                lock.__enter__()
            except RunBusy as e:
                raise self._failed(e, str(run.dir)) from e

        distributed.on_main(take)
        try:
            return self._recorded(run, ds, skipped, hashes, resume)
        finally:
            if distributed.is_main():
                lock.__exit__(None, None, None)

    def _recorded(self, run, ds: ImageDataset, skipped: list[Problem], hashes: dict[str, str], resume: bool) -> RunResult:
        self.run, self.t0, self.skipped = run, time.perf_counter(), list(skipped)
        self.seconds_before = run.summary.get("seconds", 0.0) if resume else 0.0
        self.best_acc, self.best_epoch, self.epoch, self.images_per_s = 0.0, 0, 0, 0.0
        recorders = [RunRecorder(run)] if distributed.is_main() else []  # rank 0 alone writes the run folder
        self.events.listeners += recorders
        self.classes, self.head_fit = ds.classes, None
        strategy = self._strategy(ds, hashes)
        self.epochs = strategy.epochs or self.config.epochs
        try:
            self.events.emit(RunStarted(str(run.dir), ds.classes, str(self.device), str(self.dtype), self.epochs,
                                        resume, len(self.skipped)))
            self.events.emit(Logged(f"Preprocessing: {self.prep.describe()}."))
            if distributed.active():
                self.events.emit(Logged(
                    f"{distributed.size()} processes (torch.distributed, {distributed.backend()}), each on 1/"
                    f"{distributed.size()} of the images; global batch {self.config.batch_size} = "
                    f"{distributed.size()} x {distributed.per_rank_batch(self.config.batch_size)} per process."))
            for p in self.skipped[:20]:
                self.events.emit(Logged(f"Skipped {Path(p.path).name}: {p.reason}"))
            status, reason = RunStatus.FINISHED, None
            try:
                reason = self._loop(strategy, resume)
            except Stopped:
                status, reason = RunStatus.STOPPED, stopped_reason(self.epoch, self.epochs)
                self.events.emit(Logged(f"Stopped after {self.epoch} epoch(s); best checkpoint kept."))
            except KeyboardInterrupt:  # Ctrl-C on a terminal: a stop, resumable like any other
                self.events.emit(RunEnded(self._result(RunStatus.STOPPED, "interrupted (Ctrl-C)"), tuple(self.skipped)))
                raise
            except Exception as e:
                message, suggestion = explain(e, self.config, run.has_checkpoint())
                self.events.emit(RunFailed(message, suggestion, str(run.dir)))
                raise TrainingError(message, suggestion, str(run.dir)) from e
            result = self._result(status, reason)
            self.events.emit(RunEnded(result, tuple(self.skipped)))
            return result
        finally:
            for recorder in recorders:
                self.events.listeners.remove(recorder)

    def _result(self, status: str, reason: str | None) -> RunResult:
        return RunResult(str(self.run.dir), status, self.best_acc, self.best_epoch, self.epoch, self._seconds(),
                         self.images_per_s, len(self.skipped), reason)

    def _seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.t0

    def _optimizer(self, groups: list[dict], steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        cfg = self.config
        if cfg.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(groups, momentum=0.9, weight_decay=cfg.weight_decay)
        else:
            # fused on CPU: one kernel over every tensor instead of a Python loop over each of them
            opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=self.device.type == "cpu" or None)
        if cfg.schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps)
        else:
            warm = max(1, steps // 20)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        return opt, sched

    def _restore(self, strategy: Strategy, opt, sched) -> int:
        """Resume: the last checkpoint and optimiser state; 0 (start over) when no epoch had finished."""
        state = load_trainer_state(self.run.dir)
        if state is None or not (self.run.dir / "last.safetensors").exists():
            self.events.emit(Logged("Nothing had finished before the interruption: this run starts from the beginning."))
            return 0
        strategy.load(self.run.model_state("last"))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        self.best_acc, self.best_epoch = state["best_acc"], state["best_epoch"]
        self.events.emit(Logged(f"Resuming after epoch {state['epoch']} (best {percent(self.best_acc)})."))
        return int(state["epoch"])

    def _loop(self, strategy: Strategy, resume: bool) -> str | None:
        """The one training loop. Returns why it ended early (early stopping), or None."""
        cfg, epochs = self.config, self.epochs
        strategy.prepare(self)
        self.batch_size = distributed.per_rank_batch(cfg.batch_size)
        steps_per_epoch = strategy.steps_per_epoch(self.batch_size)
        opt, sched = self._optimizer(strategy.param_groups(), epochs * steps_per_epoch)
        start = self._restore(strategy, opt, sched) if resume else 0
        self.epoch = start
        scaler = torch.amp.GradScaler(self.device.type, enabled=needs_grad_scaler(strategy.autocast))
        gen = torch.Generator().manual_seed(cfg.seed + start + 1_000_003 * distributed.rank())  # each rank its own draws
        self.phase("training", f"Training ({cfg.strategy}) on {strategy.n_train} images")
        t_train, steps_done, seen, train_time = time.perf_counter(), 0, 0, 0.0
        steps_left = (epochs - start) * steps_per_epoch
        for epoch in range(start + 1, epochs + 1):
            t_epoch, total, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
            strategy.train_mode()
            for step, idx in enumerate(strategy.batches(self.batch_size, gen)):
                self.sync_stop()
                t_step = time.perf_counter()
                loss_value, logits, y = strategy.step(idx, gen, opt, sched, scaler, cfg.label_smoothing, self.device)
                train_time += time.perf_counter() - t_step
                total, seen, steps_done = total + len(y), seen + len(y), steps_done + 1
                correct += (logits.argmax(1) == y).sum().item()
                loss_sum += loss_value * len(y)
                # the ranks step in lockstep, so the whole job's rate is this rank's times their number
                self.images_per_s = seen * distributed.size() / max(train_time, 1e-9) if strategy.has_rate else 0.0
                elapsed = time.perf_counter() - t_train  # includes validation, so the ETA does too
                eta = elapsed / steps_done * (steps_left - steps_done)
                self.events.emit(StepEnded(epoch, step + 1, steps_per_epoch, loss_value, sched.get_last_lr()[0],
                                           self.images_per_s, eta))
            loss_sum, correct, total = distributed.all_sum(loss_sum, correct, total)
            val_loss, val_acc = strategy.validate(self.check_stop)
            row = EpochRow(epoch, loss_sum / total, correct / total, val_loss, val_acc, sched.get_last_lr()[0],
                           self.images_per_s, time.perf_counter() - t_epoch)
            if self._end_epoch(row, strategy.state(), opt, sched):
                return f"early-stopped at epoch {epoch} (patience {cfg.patience})"
        return None

    def _end_epoch(self, row: EpochRow, trainable: dict[str, torch.Tensor], opt, sched) -> bool:
        """Checkpoint, tell the listeners (the recorder writes metrics and summary), decide on early stopping."""
        self.epoch = row.epoch
        improved = row.val_acc > self.best_acc or self.best_epoch == 0
        if improved:
            self.best_acc, self.best_epoch = row.val_acc, row.epoch
        if distributed.is_main():  # every rank holds the same weights and figures; rank 0 writes them
            if improved:
                save_state(self.run.dir / "best.safetensors", trainable, self.classes)
            save_state(self.run.dir / "last.safetensors", trainable, self.classes)
            save_trainer_state(self.run.dir, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                              "epoch": self.epoch, "best_acc": self.best_acc, "best_epoch": self.best_epoch})
        row = EpochRow(**{**row.to_dict(), "seconds": round(self._seconds(), 3), "best_val_acc": self.best_acc,
                          "best_epoch": self.best_epoch})
        self.events.emit(EpochEnded(row, self.epochs, improved))
        patience = self.config.patience
        if patience and self.epoch - self.best_epoch >= patience and self.epoch < self.epochs:
            self.events.emit(Logged(f"Early stop: no better validation accuracy for {patience} epochs."))
            return True
        return False


def train(
    data: str | DatasetSpec,
    config: TrainConfig,
    runs_dir: str | Path | None = None,
    listeners: list[Listener] | tuple = (),
    stop: threading.Event | None = None,
) -> RunResult:
    return Trainer(config, listeners, stop).fit(data, runs_dir)


def resume(run_dir: str | Path, listeners: list[Listener] | tuple = (), stop: threading.Event | None = None,
           epochs: int | None = None) -> RunResult:
    """Continue a stopped, failed or interrupted run from its last checkpoint, in the same folder."""
    run = load_run(run_dir)
    config = TrainConfig.from_dict(run.info["config"])
    if epochs:
        config.epochs = epochs
    return Trainer(config, listeners, stop).resume(run.dir)
