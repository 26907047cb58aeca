"""Fine-tune a backbone on a dataset; emits named events and keeps every finished epoch on disk.

Two paths share one epoch loop:
* frozen backbone with a linear head: embeddings are computed once (cached, a few augmented views per image)
  and only the head trains on them; the same model as running the backbone every epoch, far faster;
* fine-tuning (last K stages or full): images decoded once, batches augmented on the device, channels_last,
  autocast (bf16, or fp16 with a grad scaler), optional torch.compile.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tl_core import backbones, paths
from tl_core.config import TrainConfig
from tl_core.datasets import DatasetError, ImageDataset, Problem, Sample, load_dataset
from tl_core.devices import fast_dtype, needs_grad_scaler, pick_device
from tl_core.embeddings import EmbeddingCache, compute_views, group_key
from tl_core.events import Emitter, Listener
from tl_core.images import content_hash
from tl_core.pipeline import MAX_DECODED_BYTES, Batcher, batches, decode_filled, decode_many
from tl_core.runs import FAILED, FINISHED, RUNNING, STOPPED, Run, load_run, new_run, save_state, write_json


class Stopped(Exception):
    """Raised inside the loop when a stop was requested; the run keeps what it has."""


class TrainingError(RuntimeError):
    def __init__(self, message: str, suggestion: str, run_dir: str | None = None):
        super().__init__(message)
        self.suggestion, self.run_dir = suggestion, run_dir


@dataclass
class RunResult:
    run_dir: str
    status: str
    best_val_accuracy: float
    best_epoch: int
    epochs_completed: int
    seconds: float
    images_per_s: float
    skipped: int

    def to_dict(self) -> dict:
        return asdict(self)


def explain(exc: BaseException, config: TrainConfig) -> tuple[str, str]:
    """An error as (message, what to do about it) for people, not a traceback."""
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return (f"Out of memory with batch size {config.batch_size}.",
                "Lower the batch size or image size, choose a smaller backbone, or use feature extraction.")
    if isinstance(exc, backbones.WeightsUnavailable):
        return str(exc), "Choose a backbone marked 'cached', add the weight file, or train from scratch."
    if isinstance(exc, DatasetError):
        return str(exc), "Check the Dataset page's problems table and fix the folder layout."
    if isinstance(exc, ValueError):
        return str(exc), "Check the settings and the data."
    return f"{type(exc).__name__}: {exc}", "See the log; the run keeps its finished epochs and best checkpoint."


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

    def labels(self) -> torch.Tensor:
        return torch.tensor([s.label for s in self.samples])

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        if self.data is not None:
            return self.data[idx]
        u8, _, problems = decode_filled([self.samples[i] for i in idx.tolist()], self.size)
        self.problems += [p for p in problems if p not in self.problems]  # files that went bad mid-run, once
        return u8


class Trainer:
    def __init__(self, config: TrainConfig, listeners: list[Listener] | tuple = (), stop: threading.Event | None = None):
        self.config = config.validate()
        self.events = Emitter(listeners)
        self.stop = stop or threading.Event()
        self.device = pick_device(config.device)
        self.dtype = fast_dtype(self.device) if config.amp else None

    # ---------------------------------------------------------------- entry points

    def fit(self, data: str | ImageDataset, runs_dir: str | Path | None = None) -> RunResult:
        ds = load_dataset(data, self.config.val_fraction, self.config.seed) if isinstance(data, str) else data
        run = new_run(runs_dir or paths.runs_dir(), self.config.backbone)
        write_json(run.dir / "run.json", {
            "id": run.id, "created": time.time(), "config": self.config.to_dict(),
            "dataset": {"source": data if isinstance(data, str) else ds.root, "name": ds.name, "root": ds.root,
                        "split_source": ds.split_source},
            "classes": ds.classes, "device": str(self.device), "dtype": str(self.dtype),
        })
        write_json(run.dir / "split.json", {sp: [[s.path, s.label] for s in ds.split(sp)] for sp in ds.splits})
        run.write_summary(status=RUNNING, best_val_accuracy=0.0, best_epoch=0, epochs_completed=0, seconds=0.0)
        return self._guarded(run, ds, resume=False)

    def resume(self, run_dir: str | Path) -> RunResult:
        run = load_run(run_dir)
        info = run.info
        ds = ImageDataset(info["dataset"]["name"], info["dataset"]["root"], info["classes"],
                          [Sample(p, y, sp) for sp in ("train", "val", "test") for p, y in run.split(sp)])
        run.write_summary(status=RUNNING)
        return self._guarded(run, ds, resume=True)

    # ---------------------------------------------------------------- common

    def _guarded(self, run: Run, ds: ImageDataset, resume: bool) -> RunResult:
        self.run, self.t0 = run, time.perf_counter()
        self.seconds_before = run.summary.get("seconds", 0.0) if resume else 0.0
        self.best_acc, self.best_epoch, self.epoch, self.skipped = 0.0, 0, 0, list(ds.skipped)
        self.images_per_s = 0.0
        self.events.emit("run_start", run_dir=str(run.dir), config=self.config.to_dict(), classes=ds.classes,
                         device=str(self.device), dtype=str(self.dtype), resume=resume)
        status = FINISHED
        try:
            self._train(ds, resume)
        except Stopped:
            status = STOPPED
            self.events.emit("log", message=f"Stopped after {self.epoch} epoch(s); best checkpoint kept.")
        except KeyboardInterrupt:  # Ctrl-C on a terminal: a stop, resumable like any other
            run.write_summary(status=STOPPED, seconds=self._seconds())
            raise
        except Exception as e:
            message, suggestion = explain(e, self.config)
            run.write_summary(status=FAILED, error=message, suggestion=suggestion, seconds=self._seconds())
            self.events.emit("run_error", message=message, suggestion=suggestion, run_dir=str(run.dir))
            raise TrainingError(message, suggestion, str(run.dir)) from e
        result = RunResult(str(run.dir), status, self.best_acc, self.best_epoch, self.epoch, self._seconds(),
                           self.images_per_s, len(self.skipped))
        run.write_summary(status=status, seconds=result.seconds, skipped=[asdict(p) for p in self.skipped][:1000])
        self.events.emit("run_end", **result.to_dict())
        return result

    def _seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.t0

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Stopped

    def _progress(self, phase: str) -> Callable[[int, int], None]:
        def report(done: int, total: int) -> None:
            self._check_stop()
            self.events.emit("progress", phase=phase, done=done, total=total)

        return report

    def _train(self, ds: ImageDataset, resume: bool) -> None:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        train, val = ds.split("train"), ds.split("val")
        if len({s.label for s in train}) < 2:
            raise DatasetError("Training needs images of at least two classes in the training split.")
        if not val:
            raise DatasetError("There are no validation images; add a val/ folder or use a random split.")
        self.events.emit("phase", phase="weights", message=f"Loading {cfg.backbone} weights")
        model, head, prep = backbones.build(
            cfg.backbone, len(ds.classes), cfg.pretrained, cfg.weights_path,
            on_download=self._progress("downloading weights"),
        )
        if cfg.image_size:
            prep = prep.at_size(cfg.image_size)
        info = self.run.info
        info.update(head=head, preprocessing=asdict(prep), weights=self._weights_id(cfg))
        write_json(self.run.dir / "run.json", info)
        self.model, self.head, self.prep = model, head, prep
        linear_head = isinstance(model.get_submodule(head), nn.Linear)
        if cfg.strategy == "features" and linear_head and cfg.embedding_cache:
            self._fit_features(train, val, resume)
        else:
            self._fit_network(train, val, resume)

    def _weights_id(self, cfg: TrainConfig) -> str:
        if cfg.weights_path:
            return f"file:{content_hash(cfg.weights_path)}"
        if not cfg.pretrained:
            return f"scratch:seed{cfg.seed}"
        return str(backbones.pick_weights(cfg.backbone))

    def _optimizer(self, groups: list[dict], steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        cfg = self.config
        if cfg.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(groups, momentum=0.9, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        if cfg.schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps)
        else:
            warm = max(1, steps // 20)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        return opt, sched

    def _end_epoch(self, row: dict, trainable: dict[str, torch.Tensor], opt, sched) -> bool:
        """Record the epoch, checkpoint, and say whether early stopping should end the run."""
        self.epoch = row["epoch"]
        improved = row["val_acc"] > self.best_acc or self.best_epoch == 0
        if improved:
            self.best_acc, self.best_epoch = row["val_acc"], row["epoch"]
            save_state(self.run.dir / "best.safetensors", trainable)
        save_state(self.run.dir / "last.safetensors", trainable)
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": self.epoch,
                    "best_acc": self.best_acc, "best_epoch": self.best_epoch}, self.run.dir / "trainer_state.pt")
        row.update(seconds=round(self._seconds(), 3), best_val_acc=self.best_acc)
        self.run.append_metrics(row)
        self.run.write_summary(status=RUNNING, best_val_accuracy=self.best_acc, best_epoch=self.best_epoch,
                               epochs_completed=self.epoch, seconds=self._seconds())
        self.events.emit("epoch_end", **row, epochs=self.config.epochs, improved=improved)
        patience = self.config.patience
        if patience and self.epoch - self.best_epoch >= patience:
            self.events.emit("log", message=f"Early stop: no better validation accuracy for {patience} epochs.")
            return True
        return False

    def _restore(self, opt, sched, load: Callable[[dict], None]) -> int:
        """Resume: load the last checkpoint and optimiser; returns the epoch to start from."""
        load(self.run.model_state("last"))
        state = torch.load(self.run.dir / "trainer_state.pt", weights_only=True)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        self.best_acc, self.best_epoch = state["best_acc"], state["best_epoch"]
        self.events.emit("log", message=f"Resuming after epoch {state['epoch']} (best {self.best_acc:.3f}).")
        return state["epoch"]

    # ---------------------------------------------------------------- frozen backbone: cached embeddings

    def _fit_features(self, train: list[Sample], val: list[Sample], resume: bool) -> None:
        cfg, model, head = self.config, self.model, self.head
        model.to(self.device, memory_format=torch.channels_last)
        batcher = Batcher(self.prep, self.device, cfg.augment)
        n_views = cfg.feature_views if cfg.augment != "none" else 1
        base = dict(backbone=cfg.backbone, weights=self._weights_id(cfg), prep=asdict(self.prep), dtype=str(self.dtype))
        caches = [EmbeddingCache(group_key(**base, view=0))] + [
            EmbeddingCache(group_key(**base, view=v, augment=cfg.augment, seed=cfg.seed)) for v in range(1, n_views)]

        def embed_split(samples: list[Sample], views: int, phase: str) -> tuple[torch.Tensor, torch.Tensor]:
            hashes = []
            for i, s in enumerate(samples):
                hashes.append(content_hash(s.path))
                if i % 64 == 0:
                    self._progress(f"hashing {phase}")(i, len(samples))
            bad: set[int] = set()

            def images(idx: torch.Tensor) -> torch.Tensor:
                u8, failed, problems = decode_filled([samples[i] for i in idx.tolist()], self.prep.resize)
                bad.update(idx[failed].tolist())
                self.skipped += problems
                return u8

            gen = torch.Generator().manual_seed(cfg.seed)
            x = compute_views(
                model, head, images, lambda v, u8: batcher.eval(u8) if v == 0 else batcher.train(u8, gen),
                len(samples), views, hashes, caches[:views], self.dtype, batch_size=32,
                progress=self._progress(f"embedding {phase} images"), should_stop=self.stop.is_set,
            )
            keep = torch.tensor([i for i in range(len(samples)) if i not in bad], dtype=torch.long)
            labels = torch.tensor([s.label for s in samples])
            return x[:, keep], labels[keep]

        try:
            self.events.emit("phase", phase="embedding", message="Computing embeddings once (cached for later runs)")
            t = time.perf_counter()
            x_train, y_train = embed_split(train, n_views, "train")
            x_val, y_val = embed_split(val, 1, "val")
            x_val = x_val[0]
        except InterruptedError:
            raise Stopped from None
        n_embedded = x_train.shape[0] * x_train.shape[1] + len(x_val)
        self.images_per_s = n_embedded / max(time.perf_counter() - t, 1e-9)
        layer: nn.Linear = model.get_submodule(head).float().to(self.device)
        prefix = head + "."
        save_state(self.run.dir / "backbone.safetensors",
                   {k: v for k, v in model.state_dict().items() if not k.startswith(prefix)})
        steps_per_epoch = math.ceil(len(y_train) / cfg.batch_size)
        opt, sched = self._optimizer([{"params": layer.parameters(), "lr": cfg.head_lr}], cfg.epochs * steps_per_epoch)
        start = self._restore(opt, sched, lambda st: layer.load_state_dict(
            {k.removeprefix(prefix): v for k, v in st.items() if k.startswith(prefix)})) if resume else 0
        x_train, y_train, x_val, y_val = (t.to(self.device) for t in (x_train, y_train, x_val, y_val))
        gen = torch.Generator().manual_seed(cfg.seed + start)
        self.events.emit("phase", phase="training", message="Training the new head on cached embeddings")
        for epoch in range(start + 1, cfg.epochs + 1):
            t_epoch, total, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
            layer.train()
            for step, idx in enumerate(batches(len(y_train), cfg.batch_size, True, gen)):
                self._check_stop()
                view = torch.randint(0, x_train.shape[0], (len(idx),), generator=gen)
                x = F.dropout(x_train[view.to(self.device), idx.to(self.device)], 0.2, training=True)
                y = y_train[idx.to(self.device)]
                logits = layer(x)
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += len(y)
                correct += (logits.argmax(1) == y).sum().item()
                loss_sum += loss.item() * len(y)
                self.events.emit("step_end", epoch=epoch, step=step + 1, steps=steps_per_epoch, loss=loss.item(),
                                 lr=sched.get_last_lr()[0], images_per_s=self.images_per_s, eta=None)
            layer.eval()
            with torch.no_grad():
                logits = layer(x_val)
                val_loss = F.cross_entropy(logits, y_val).item()
                val_acc = (logits.argmax(1) == y_val).float().mean().item()
            row = dict(epoch=epoch, train_loss=loss_sum / total, train_acc=correct / total, val_loss=val_loss,
                       val_acc=val_acc, lr=sched.get_last_lr()[0], images_per_s=self.images_per_s,
                       epoch_seconds=time.perf_counter() - t_epoch)
            state = {prefix + k: v for k, v in layer.state_dict().items()}
            if self._end_epoch(row, state, opt, sched):
                break

    # ---------------------------------------------------------------- fine-tuning: the whole network runs

    def _fit_network(self, train: list[Sample], val: list[Sample], resume: bool) -> None:
        cfg, model, head, device = self.config, self.model, self.head, self.device
        self.events.emit("phase", phase="decoding", message="Decoding images once into memory")
        train_store = ImageStore(train, self.prep.resize, self._progress("decoding train images"))
        val_store = ImageStore(val, self.prep.resize, self._progress("decoding val images"))
        self.skipped += train_store.problems + val_store.problems
        if not len(train_store) or not len(val_store):
            raise DatasetError("No decodable images left in the train or val split.")
        backbones.apply_strategy(model, head, cfg.strategy, cfg.finetune_stages)
        model.to(device, memory_format=torch.channels_last)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        net = torch.compile(model) if cfg.compile else model
        head_params = list(model.get_submodule(head).parameters())
        head_ids = {id(p) for p in head_params}
        body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
        groups = [{"params": head_params, "lr": cfg.head_lr}]
        if body:
            groups.append({"params": body, "lr": cfg.head_lr * cfg.backbone_lr_factor})
        steps_per_epoch = math.ceil(len(train_store) / cfg.batch_size)
        total_steps = cfg.epochs * steps_per_epoch
        opt, sched = self._optimizer(groups, total_steps)
        start = self._restore(opt, sched, lambda st: model.load_state_dict(st)) if resume else 0
        scaler = torch.amp.GradScaler(device.type, enabled=needs_grad_scaler(self.dtype))
        batcher = Batcher(self.prep, device, cfg.augment)
        y_train, y_val = train_store.labels(), val_store.labels()
        gen = torch.Generator().manual_seed(cfg.seed + start)
        self.events.emit("phase", phase="training", message=f"Training ({cfg.strategy})")
        t_run, seen = time.perf_counter(), 0
        for epoch in range(start + 1, cfg.epochs + 1):
            t_epoch, total, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
            model.train()
            backbones.freeze_batchnorm(model)
            for step, idx in enumerate(batches(len(train_store), cfg.batch_size, True, gen)):
                self._check_stop()
                x = batcher.train(train_store.get(idx), gen)
                y = y_train[idx].to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype is not None):
                    logits = net(x)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                total += len(y)
                seen += len(y)
                correct += (logits.argmax(1) == y).sum().item()
                loss_sum += loss.item() * len(y)
                self.images_per_s = seen / (time.perf_counter() - t_run)
                done = (epoch - start - 1) * steps_per_epoch + step + 1
                eta = (time.perf_counter() - t_run) / done * ((cfg.epochs - start) * steps_per_epoch - done)
                self.events.emit("step_end", epoch=epoch, step=step + 1, steps=steps_per_epoch, loss=loss.item(),
                                 lr=sched.get_last_lr()[0], images_per_s=self.images_per_s, eta=eta)
            val_loss, val_acc = self._validate(net, batcher, val_store, y_val)
            row = dict(epoch=epoch, train_loss=loss_sum / total, train_acc=correct / total, val_loss=val_loss,
                       val_acc=val_acc, lr=sched.get_last_lr()[0], images_per_s=self.images_per_s,
                       epoch_seconds=time.perf_counter() - t_epoch)
            if self._end_epoch(row, model.state_dict(), opt, sched):
                break

    def _validate(self, net: nn.Module, batcher: Batcher, store: ImageStore, labels: torch.Tensor) -> tuple[float, float]:
        net.eval()
        loss_sum, correct = 0.0, 0
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            for idx in batches(len(store), self.config.batch_size * 2, False):
                self._check_stop()
                logits = net(batcher.eval(store.get(idx))).float()
                y = labels[idx].to(self.device)
                loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(1) == y).sum().item()
        return loss_sum / len(store), correct / len(store)


def train(
    data: str | ImageDataset,
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
