"""Training and inference throughput of a torchvision model on this device, with synthetic input.

Why: the published figures (NVIDIA's ResNet-50 mixed-precision training, timm's inference tables) are
images/s at 224 px with random data, so we measure the same thing, the same way as TL Studio trains:
bf16/fp16 autocast (where the device has it), channels_last, optional torch.compile, random weights
(speed does not depend on their values). Three training timings tell where the time goes:

* `compute`: a full step (forward, backward, optimiser) on a normalised batch already on the device;
* `fwd_bwd`: forward and backward only, no optimiser;
* `pipeline`: the step as the trainer runs it: a uint8 batch gathered from host memory, pinned, copied,
  augmented on the device by `pipeline.Batcher.train`, then the step and a `loss.item()` every step.

`pipeline_ratio` = pipeline / compute: near 1 means the input pipeline keeps up with the GPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from tl_core.config import DEFAULT_BACKBONE, OPTIMIZERS
from tl_core.data.pipeline import Batcher
from tl_core.devices import describe_device, fast_dtype
from tl_core.features.cache import fuse_for_inference
from tl_core.models.backbones import Preprocessing

MODELS = ("resnet18", "resnet50", DEFAULT_BACKBONE)  # measured when no names are given


@dataclass(frozen=True)
class Settings:
    """What is measured and how long: `steps` per timed repeat, median over `repeats`, after `warmup` steps."""

    batch: int = 256
    size: int = 224
    steps: int = 10
    repeats: int = 5
    warmup: int = 5
    compile: bool = False
    compile_backend: str = "inductor"  # "aot_eager" checks graph capture in seconds (the CPU dry run)
    optimizer: str = "sgd"
    infer_batch: int = 256

    def validate(self) -> Settings:
        if min(self.batch, self.steps, self.repeats, self.infer_batch) < 1 or self.warmup < 0:
            raise ValueError("batch, steps, repeats and inference batch must be at least 1, warm-up at least 0.")
        if not 32 <= self.size <= 1024:
            raise ValueError("size must be between 32 and 1024 pixels.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}.")
        return self


@dataclass
class Throughput:
    model: str
    device: str
    dtype: str
    batch: int
    size: int
    compile: bool
    optimizer: str
    compute_ms: float  # median step time: forward + backward + optimiser, input already on the device
    fwd_bwd_ms: float  # median forward + backward time (no optimiser)
    pipeline_ms: float  # median step time through the real input pipeline (see module docstring)
    train_images_per_s: float  # batch / compute step
    pipeline_images_per_s: float  # batch / pipeline step
    pipeline_ratio: float  # pipeline_ms / compute_ms: ~1.0 when the input pipeline keeps up
    warmup_s: float  # first steps, including torch.compile when on
    infer_batch: int
    infer_ms: float  # median time of one inference batch (eval, fused BatchNorm, inference_mode)
    infer_images_per_s: float
    peak_memory_mb: float | None  # CUDA only: peak allocated during training

    def to_dict(self) -> dict:
        return asdict(self)


def sync(device: torch.device) -> None:
    """Wait for queued device work, so a wall-clock interval covers what the device did in it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def median_ms(run: Callable[[], object], device: torch.device, steps: int, repeats: int) -> float:
    """Median over `repeats` of the mean time of `steps` calls, synchronised at both ends of each window."""
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            run()
        sync(device)
        times.append((time.perf_counter() - t) / steps * 1000)
    return statistics.median(times)


def _optimizer(name: str, params) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)


def _compiled(model: nn.Module, s: Settings) -> nn.Module:
    return torch.compile(model, backend=s.compile_backend) if s.compile else model


class TrainStep:
    """One training step of `net` under autocast, from a normalised batch `x` and labels `y` on the device."""

    def __init__(self, name: str, device: torch.device, settings: Settings):
        self.device, self.settings = device, settings
        self.dtype = fast_dtype(device)
        self.model = models.get_model(name, weights=None).to(device, memory_format=torch.channels_last)
        self.net = _compiled(self.model, settings)
        self.model.train()
        self.opt = _optimizer(settings.optimizer, self.model.parameters())

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            logits = self.net(x)
        return F.cross_entropy(logits.float(), y, label_smoothing=0.1)

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(x, y)
        loss.backward()
        return loss

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.forward_backward(x, y)
        self.opt.step()
        return loss


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def measure_training(name: str, device: torch.device, s: Settings) -> dict:
    """compute / fwd_bwd / pipeline step times (ms) and warm-up seconds for one model."""
    _peak_reset(device)
    step = TrainStep(name, device, s)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(s.batch, 3, s.size, s.size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (s.batch,), device=device)
    prep = Preprocessing.imagenet(s.size)
    batcher = Batcher(prep, device, "light")
    pool = 2 * s.batch  # decoded uint8 squares in host memory, as the trainer's ImageStore keeps them
    store = torch.randint(0, 256, (pool, 3, prep.resize, prep.resize), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 1000, (pool,), generator=gen)

    def pipeline_step() -> float:
        idx = torch.randperm(pool, generator=gen)[: s.batch]
        xb = batcher.train(store[idx], gen)
        yb = labels[idx].to(device, non_blocking=True)
        return step(xb, yb).item()  # the trainer reads the loss every step

    t = time.perf_counter()
    for _ in range(s.warmup):
        step(x, y)
        pipeline_step()
    sync(device)
    warmup_s = time.perf_counter() - t
    compute = median_ms(lambda: step(x, y), device, s.steps, s.repeats)
    fwd_bwd = median_ms(lambda: step.forward_backward(x, y), device, s.steps, s.repeats)
    pipeline = median_ms(pipeline_step, device, s.steps, s.repeats)
    return {"compute_ms": compute, "fwd_bwd_ms": fwd_bwd, "pipeline_ms": pipeline, "warmup_s": warmup_s,
            "dtype": str(step.dtype).removeprefix("torch."), "peak_memory_mb": _peak_mb(device)}


def measure_inference(name: str, device: torch.device, s: Settings) -> float:
    """Median ms per batch of `s.infer_batch`: eval, fused BatchNorm, inference_mode, autocast, channels_last."""
    dtype = fast_dtype(device)
    model = fuse_for_inference(models.get_model(name, weights=None)).to(device, memory_format=torch.channels_last)
    net = _compiled(model, s)
    x = torch.randn(s.infer_batch, 3, s.size, s.size, device=device).contiguous(memory_format=torch.channels_last)

    def forward() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return net(x)

    for _ in range(max(2, s.warmup)):
        forward()
    return median_ms(forward, device, s.steps, s.repeats)


def measure(name: str, device: torch.device, settings: Settings) -> Throughput:
    s = settings.validate()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train = measure_training(name, device, s)
    infer_ms = measure_inference(name, device, s)
    return Throughput(
        model=name, device=describe_device(device), dtype=train["dtype"], batch=s.batch, size=s.size,
        compile=s.compile, optimizer=s.optimizer,
        compute_ms=round(train["compute_ms"], 3), fwd_bwd_ms=round(train["fwd_bwd_ms"], 3),
        pipeline_ms=round(train["pipeline_ms"], 3),
        train_images_per_s=round(s.batch / train["compute_ms"] * 1000, 1),
        pipeline_images_per_s=round(s.batch / train["pipeline_ms"] * 1000, 1),
        pipeline_ratio=round(train["pipeline_ms"] / train["compute_ms"], 3),
        warmup_s=round(train["warmup_s"], 2), infer_batch=s.infer_batch, infer_ms=round(infer_ms, 3),
        infer_images_per_s=round(s.infer_batch / infer_ms * 1000, 1), peak_memory_mb=train["peak_memory_mb"],
    )


def defaults_for(device: torch.device) -> Settings:
    """The published benchmarks' setting on a GPU (batch 256, 224 px); small enough to finish on a CPU."""
    if device.type == "cpu":
        return Settings(batch=16, steps=3, repeats=3, warmup=2, infer_batch=32)
    return Settings()
