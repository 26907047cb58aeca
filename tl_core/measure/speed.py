"""Speed measured on this machine's device, kept as data (a JSON table per device description).

Every figure is the median of timed repeats after a warm-up: the first calls of a model pay for kernel
selection and memory allocation (hundreds of ms on CPU), and a single timing on a busy machine is noise.
Three rates per backbone: batch-1 latency, batched inference throughput (what the feature path's embedding
and the Predict page run), and forward+backward training throughput (what fine-tuning runs).

A median does not undo a machine that stays busy for the whole measurement: another process using the cores
makes every repeat slow alike, and the figure then holds for as long as it is kept (an ants-vs-bees fine-tuning
estimate read 2.3x the real run on a quiet machine from a figure taken on a busy one). So each measurement records
how busy the machine was as it began (`machine_busy`: the share of all CPU time in use, from /proc/stat over a
fifth of a second), and `current`, which the time estimate asks, retakes a figure taken on a busy machine (or
under unknown load) once the machine is quiet. A busy figure is kept while the machine stays busy: a run started
then is slowed alike.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torchvision import models

from tl_core import paths
from tl_core.devices import describe_device, fast_dtype, pick_device
from tl_core.features.cache import fuse_for_inference
from tl_core.measure.throughput import sync

SHORTLIST = ("mobilenet_v3_small", "mobilenet_v2", "shufflenet_v2_x1_0", "mobilenet_v3_large", "resnet18", "efficientnet_b0")


@dataclass(frozen=True)
class Speed:
    name: str
    device: str  # the device's description (model, threads, precision), so figures are never mixed up
    ms_per_image: float  # batch-1 latency, median
    images_per_s: float  # inference throughput at `batch`, median
    batch: int
    train_images_per_s: float | None  # forward + backward + update at `train_batch`, median (None: not measured)
    train_batch: int
    measured: float
    busy: float | None = None  # share of the machine's CPU time in use as the measurement began; None: not known

    @property
    def taken_under_load(self) -> bool:
        """Measured while others kept the machine busy, or under unknown load: worth retaking when it is quiet."""
        return self.busy is None or self.busy > BUSY


BUSY = 0.5  # a figure taken while over half of the machine's CPU time was in use is retaken once it is quiet
QUIET = 0.25  # ... which it is below a quarter
_PROC_STAT = "/proc/stat"


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) CPU ticks of the whole machine since boot, from Linux's /proc/stat; None elsewhere."""
    try:
        with open(_PROC_STAT) as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    return (ticks[3] + ticks[4], sum(ticks)) if len(ticks) >= 5 else None


def machine_busy(window: float = 0.2) -> float | None:
    """Share of this machine's CPU time in use right now, 0 (idle) to 1 (every core busy): /proc/stat over `window`
    seconds on Linux, else the one-minute load average per core; None where neither can be read."""
    before = _cpu_times()
    if before is not None:
        time.sleep(window)
        after = _cpu_times()
        if after is not None and after[1] > before[1]:
            return round(1 - (after[0] - before[0]) / (after[1] - before[1]), 3)
    try:
        return round(min(1.0, os.getloadavg()[0] / (os.cpu_count() or 1)), 3)
    except (OSError, AttributeError):  # no load average (Windows)
        return None


def _cache_file():
    return paths.home() / "speed.json"


def _device_key(device: torch.device) -> str:
    return f"{describe_device(device)} | torch {torch.__version__}"


def load_speeds(device: torch.device | None = None) -> dict[str, Speed]:
    device = device or pick_device()
    try:
        table = json.loads(_cache_file().read_text()).get(_device_key(device), {})
        return {k: Speed(**v) for k, v in table.items()}
    except (OSError, json.JSONDecodeError, TypeError):  # missing, corrupt, or written by an older version
        return {}


def _store(device: torch.device, speed: Speed) -> None:
    from tl_core.paths import write_json

    f = _cache_file()
    f.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        data = {}
    data.setdefault(_device_key(device), {})[speed.name] = asdict(speed)
    write_json(f, data)


STEADY = 1.5  # warm-up goes on while each call is over this many times faster than the one before


def warm_up(fn: Callable[[], object], device: torch.device, calls: int = 3, most: int = 10, budget: float = 2.0) -> int:
    """Run `fn` until it stops getting faster: at least `calls` times, then until a call is less than STEADY x faster
    than the one before (at most `most` calls or `budget` seconds). The first calls of a backbone pay for kernel
    selection, weight packing and allocation, hundreds of ms that a fixed few warm-up calls can leave in the figure
    (efficientnet_b0's first pass read 14x its speed). Returns how many calls it made."""
    last, n, start = float("inf"), 0, time.perf_counter()
    while n < most:
        t = time.perf_counter()
        fn()
        sync(device)
        took, n = time.perf_counter() - t, n + 1
        if n >= calls and (took * STEADY >= last or time.perf_counter() - start > budget):
            break
        last = took
    return n


def median_seconds(fn: Callable[[], object], device: torch.device, warmup: int = 3, reps: int = 5, budget: float = 3.0) -> float:
    """Median wall time of `fn` once it is warm: at least 3 timed repeats, up to `reps` while the budget lasts."""
    warm_up(fn, device, warmup)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (len(times) < reps and time.perf_counter() - start < budget):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(name: str, device: torch.device | None = None, batch: int | None = None, size: int = 224,
            train_batch: int | None = None) -> Speed:
    """Random weights (speed does not depend on them), the same fast paths training and prediction use."""
    device = device or pick_device()
    busy = machine_busy()  # before any work of ours: how busy the others keep the machine
    batch = batch or (64 if device.type == "cuda" else 16)
    train_batch = train_batch or (64 if device.type == "cuda" else 16)
    dtype = fast_dtype(device)
    fast = fuse_for_inference(models.get_model(name, weights=None)).to(device, memory_format=torch.channels_last)

    def infer(n: int) -> float:
        x = torch.randn(n, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return median_seconds(lambda: fast(x), device)

    one, many = infer(1), infer(batch)
    net = models.get_model(name, weights=None).to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(train_batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (train_batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    train = median_seconds(step, device, warmup=2, reps=4, budget=4.0)
    speed = Speed(name, describe_device(device), round(one * 1000, 2), round(batch / many, 1), batch,
                  round(train_batch / train, 1), train_batch, time.time(), busy)
    _store(device, speed)
    return speed


def current(name: str, device: torch.device | None = None) -> Speed:
    """The speed of `name` on this device that an estimate should use: measured now when it never was, and measured
    again when the kept figure was taken under load and the machine is quiet now (see the module's docstring)."""
    device = device or pick_device()
    kept = load_speeds(device).get(name)
    if kept is None:
        return measure(name, device)
    if kept.taken_under_load:
        now = machine_busy()
        if now is not None and now <= QUIET:
            return measure(name, device)
    return kept


def measure_many(names=SHORTLIST, device: torch.device | None = None,
                 progress: Callable[[int, int, str], None] | None = None) -> dict[str, Speed]:
    out = {}
    for i, name in enumerate(names):
        if progress:
            progress(i, len(names), name)
        out[name] = measure(name, device)
    if progress:
        progress(len(names), len(names), "")
    return out
