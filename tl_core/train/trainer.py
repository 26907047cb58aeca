"""A run's life around the one loop: check the data, build the model, ask the plan, write the run folder, train.

`Trainer.fit` starts a run, `Trainer.resume` continues one from its last checkpoint, `Trainer.sweep` is the
learning-rate finder's short run on exactly the data and settings the run would use. All three hand a strategy
(`tl_core.train.strategies`) and callbacks (`tl_core.train.callbacks`) to the one loop (`tl_core.train.loop`).
Events are typed (`tl_core.train.events`); the run folder (`tl_core.train.recorder`), the CLI and the dashboard are
listeners. Under torchrun rank 0 scans, writes the run folder and emits the events; each rank trains its shard.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict
from pathlib import Path

import torch

from tl_core import paths, plan
from tl_core.config import TrainConfig
from tl_core.data import targets
from tl_core.data.scan import check_files, scan
from tl_core.data.sources import DatasetError, DatasetSpec, ImageDataset, Problem, Sample
from tl_core.devices import fast_dtype, is_out_of_memory, pick_device
from tl_core.formats import count, percent
from tl_core.models import backbones
from tl_core.paths import write_json
from tl_core.train import distributed
from tl_core.train.callbacks import Checkpoint, EarlyStopping, LRSweep
from tl_core.train.events import Emitter, Listener, Logged, PhaseProgress, PhaseStarted, RunEnded, RunFailed, RunResult, RunStarted
from tl_core.train.loop import Loop
from tl_core.train.recorder import RunRecorder
from tl_core.train.runs import TRAINER_STATE, RunBusy, RunLock, RunStatus, load_run, new_run, resume_point
from tl_core.train.strategies import Context, Stopped, Sweep, choose, weights_id

__all__ = ["RunResult", "Trainer", "TrainingError", "resume", "train"]



def stopped_reason(finished: int, planned: int) -> str:
    """A stop in words that agree with the sidebar's "epoch N/M": which epochs were finished, never "after epoch 0"."""
    if not finished:
        return "stopped by request during epoch 1, before any epoch finished"
    return f"stopped by request after epoch {finished} of {planned}"

class TrainingError(RuntimeError):
    def __init__(self, message: str, suggestion: str, run_dir: str | None = None):
        super().__init__(message)
        self.suggestion, self.run_dir = suggestion, run_dir

    def __reduce__(self):  # whole across processes: rank 0's refusal is raised on every rank (distributed.on_main)
        return TrainingError, (str(self), self.suggestion, self.run_dir)


def explain(exc: BaseException, config: TrainConfig, has_checkpoint: bool = False, run_dir: Path | None = None) -> tuple[str, str]:
    """An error as (message, what to do about it) for people, not a traceback."""
    if run_dir is not None and not run_dir.exists():
        return f"The run folder {run_dir} was deleted while the run trained.", "Start a new run; nothing of this one is left."
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
    trained = {y for s in train for y in s.labels or (s.label,)}
    if len(trained) < 2:
        raise DatasetError("Training needs usable images of at least two classes in the training split.")
    if not val:
        raise DatasetError("There are no usable validation images; add a val/ folder or use a random split.")
    if untrained := sorted({ds.classes[y] for s in val for y in s.labels or (s.label,)} - {ds.classes[y] for y in trained}):
        raise DatasetError(f"{', '.join(untrained)}: validation images but no training images, so that output could never "
                           "learn; add training images of it or take it out of val/.")


def _announce(events: Emitter, ctx: Context, run_dir: str, epochs: int, resume: bool) -> None:
    events.emit(RunStarted(run_dir, ctx.classes, str(ctx.device), str(ctx.dtype), epochs, resume, len(ctx.skipped)))
    events.emit(Logged(f"Preprocessing: {ctx.prep.describe()}."))
    if distributed.active():
        batch = ctx.config.batch_size
        events.emit(Logged(f"{distributed.size()} processes (torch.distributed, {distributed.backend()}), each on 1/"
                           f"{distributed.size()} of the images; global batch {batch} = {distributed.size()} x "
                           f"{distributed.per_rank_batch(batch)} per process."))
    if weights := ctx.plan.class_weights:
        events.emit(Logged("Classes weighted by the inverse of their share of the training images (balance "
                           f"{ctx.config.balance}): " + ", ".join(f"{c} {w:.2f}" for c, w in zip(ctx.classes, weights)) + "."))
    for p in ctx.skipped[:20]:
        events.emit(Logged(f"Skipped {Path(p.path).name}: {p.reason}"))


class Trainer:
    def __init__(self, config: TrainConfig, listeners: list[Listener] | tuple = (), stop: threading.Event | None = None):
        self.config = plan.check(config)
        self.events = Emitter(listeners if distributed.is_main() else ())  # under torchrun rank 0 alone reports
        self.stop = stop or threading.Event()
        self.device = distributed.device_for(pick_device(config.device))
        self.dtype = fast_dtype(self.device) if config.amp else None
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

    def sweep(self, data: str | DatasetSpec, sweep: LRSweep) -> LRSweep:
        """The learning-rate finder's run: the loop's steps on this config's data, split and plan, with the rate
        set by `sweep` each step, nothing validated and no run folder."""
        if plan.fits_head(self.config):
            raise ValueError("Feature extraction fits its head outright (L-BFGS): it has no learning rate to find.")
        spec = data if isinstance(data, DatasetSpec) else DatasetSpec(data)
        ds, _, hashes, prep = self._checked(spec)
        ctx = self._context(ds, prep, None)
        loop = Loop(ctx, Sweep(choose(ctx, ds.split("train"), ds.split("val"), hashes), sweep.steps), [sweep], 1)
        loop.prepare()
        try:
            loop.run()
        except Stopped:
            pass
        return sweep

    # -- the run folder

    def _checked(self, spec: DatasetSpec) -> tuple:
        """The scan (the one split every rank and the finder use), the model, and the pixels the plan decides."""
        report = scan(spec, self.progress("checking images"))
        ds = report.dataset
        check_trainable(ds)
        self._build(len(ds.classes))
        return ds, report.skipped, report.hashes(), plan.preprocessing(self.config, [s.path for s in ds.samples])

    def _new_run(self, spec: DatasetSpec, runs_dir: str | Path | None) -> tuple:
        """The checked data and model, then the new run folder with run.json and split.json."""
        try:
            ds, skipped, hashes, prep = self._checked(spec)
        except Exception as e:
            raise self._failed(e) from e
        run = new_run(runs_dir or paths.runs_dir(), self.config.backbone)
        write_json(run.dir / "run.json", {
            "id": run.id, "created": time.time(), "config": self.config.to_dict(),
            "dataset": {**spec.to_dict(), "name": ds.name, "root": ds.root, "split_source": ds.split_source},
            "classes": ds.classes, "multi_label": ds.multi_label, "device": str(self.device), "dtype": str(self.dtype), "head": self.head,
            "preprocessing": asdict(prep), "weights": weights_id(self.config), "processes": distributed.size(),
        })
        write_json(run.dir / "split.json", {sp: [[s.path, list(s.labels) if s.labels else s.label] for s in ds.split(sp)]
                                            for sp in ds.splits})
        return run, ds, skipped, hashes, prep

    def _follow(self, num_classes: int, prep: backbones.Preprocessing) -> None:
        """The other ranks build the same model (rank 0 has fetched its weights) with rank 0's preprocessing."""
        self.prep = prep
        if not distributed.is_main():
            self._build(num_classes)

    def _reopen(self, run_dir: str | Path) -> tuple:
        """A run's own split, with the files that are gone or broken now left out."""
        run = load_run(run_dir)
        info = run.info
        items = [(p, y, sp) for sp in ("train", "val", "test") for p, y in run.split(sp)]
        checks = check_files(info["dataset"]["root"], [p for p, _, _ in items], self.progress("checking images"))
        gone = [Problem(p, checks[p].reason) for p, _, _ in items if not checks[p].usable]
        ds = ImageDataset(info["dataset"]["name"], info["dataset"]["root"], info["classes"],
                          [Sample(p, y[0], sp, y) if isinstance(y, tuple) else Sample(p, y, sp)
                           for p, y, sp in items if checks[p].usable], multi_label=run.multi_label)
        try:
            check_trainable(ds)
            self._build(len(ds.classes))
        except Exception as e:
            raise self._failed(e, str(run.dir)) from e
        prep = backbones.Preprocessing.from_dict(info["preprocessing"])  # exactly what the run was trained with
        return run, ds, gone, {p: c.hash for p, c in checks.items() if c.usable}, prep

    def progress(self, phase: str):
        t0 = time.perf_counter()

        def report(done: int, total: int) -> None:
            if self.run is not None and self.stop.is_set() and not distributed.active():
                raise Stopped  # before the run exists (scan, weights) a stop simply waits for it
            elapsed = time.perf_counter() - t0
            self.events.emit(PhaseProgress(phase, done, total, done / elapsed if done and elapsed > 0.2 else None))

        return report

    def _build(self, num_classes: int) -> None:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.events.emit(PhaseStarted("weights", f"Loading {cfg.backbone} weights"))
        self.model, self.head, _ = backbones.build(cfg.backbone, num_classes, cfg.pretrained, cfg.weights_path,
                                                   on_download=self.progress("downloading weights"))

    def _failed(self, e: BaseException, run_dir: str | None = None) -> TrainingError:
        message, suggestion = explain(e, self.config)
        self.events.emit(RunFailed(message, suggestion, run_dir))
        return TrainingError(message, suggestion, run_dir)

    def _context(self, ds: ImageDataset, prep: backbones.Preprocessing, backbone_file: Path | None) -> Context:
        counts = [0] * len(ds.classes)  # class weights are for one class per picture: a label is its own question
        for s in ds.split("train") if not ds.multi_label else ():
            counts[s.label] += 1
        return Context(plan.make(self.config, prep, counts), self.model, self.head, ds.classes, self.device, self.dtype,
                       self.events, self.progress, self.stop, backbone_file, targets=targets.of(ds.multi_label))

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
        self.run = run
        recorders = [RunRecorder(run)] if distributed.is_main() else []  # rank 0 alone writes the run folder
        self.events.listeners += recorders
        ctx = self._context(ds, self.prep, run.dir / "backbone.safetensors")
        ctx.skipped += skipped
        strategy = choose(ctx, ds.split("train"), ds.split("val"), hashes)
        loop = Loop(ctx, strategy, [Checkpoint(run.dir, ds.classes), EarlyStopping(self.config.patience)], ctx.plan.epochs,
                    run.summary.get("seconds", 0.0) if resume else 0.0)
        try:
            _announce(self.events, ctx, str(run.dir), loop.epochs, resume)
            status, reason = RunStatus.FINISHED, None
            try:
                loop.prepare()
                weights = ctx.plan.class_weights
                shown = {"head_fit": ctx.head_fit, "class_weights": dict(zip(ctx.classes, weights)) if weights else None}
                if any(shown.values()) and distributed.is_main():  # how the head was fitted, the classes weighted
                    run.write_summary(**{k: v for k, v in shown.items() if v})
                reason = loop.run(self._restore(loop) if resume else 0)
            except Stopped:
                status, reason = RunStatus.STOPPED, stopped_reason(loop.epoch, loop.epochs)
                self.events.emit(Logged(f"Stopped after {count(loop.epoch, 'epoch')}; best checkpoint kept."))
            except KeyboardInterrupt:  # Ctrl-C on a terminal: a stop, resumable like any other
                self.events.emit(RunEnded(self._result(loop, RunStatus.STOPPED, "interrupted (Ctrl-C)"), tuple(ctx.skipped)))
                raise
            except Exception as e:
                message, suggestion = explain(e, self.config, run.has_checkpoint(), run.dir)
                self.events.emit(RunFailed(message, suggestion, str(run.dir)))
                raise TrainingError(message, suggestion, str(run.dir)) from e
            result = self._result(loop, status, reason)
            self.events.emit(RunEnded(result, tuple(ctx.skipped)))
            return result
        finally:
            for recorder in recorders:
                self.events.listeners.remove(recorder)

    def _result(self, loop: Loop, status: str, reason: str | None) -> RunResult:
        return RunResult(str(self.run.dir), status, loop.best_acc, loop.best_epoch, loop.epoch, loop.seconds(),
                         loop.images_per_s, len(loop.ctx.skipped), reason,
                         self.run.summary.get("best_val_balanced_accuracy"))  # the recorder's, at the best epoch

    def _restore(self, loop: Loop) -> int:
        """Resume: the last checkpoint and optimiser state (a fresh optimiser when that state is unreadable);
        0 (start over) when no epoch had finished."""
        point = resume_point(self.run)
        if point is None:
            self.events.emit(Logged("Nothing had finished before the interruption: this run starts from the beginning."))
            return 0
        loop.strategy.load(self.run.model_state("last"))
        if point.optimizer is None:
            self.events.emit(Logged(f"{TRAINER_STATE} is missing or unreadable: continuing from the last weights with a fresh optimiser."))
        else:
            loop.opt.load_state_dict(point.optimizer)
            loop.sched.load_state_dict(point.scheduler)
        loop.best_acc, loop.best_epoch = point.best_acc, point.best_epoch
        self.events.emit(Logged(f"Resuming after epoch {point.epoch} (best {percent(loop.best_acc)})."))
        return point.epoch


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
