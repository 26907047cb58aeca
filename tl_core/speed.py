"""Inference speed measured on this machine's device, kept as data (a JSON table per device)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torchvision import models

from tl_core import paths
from tl_core.devices import describe_device, fast_dtype, pick_device
from tl_core.embeddings import fuse_for_inference

SHORTLIST = ("mobilenet_v3_small", "mobilenet_v2", "shufflenet_v2_x1_0", "mobilenet_v3_large", "resnet18", "efficientnet_b0")
DECODE_SECONDS_PER_IMAGE = 0.004  # JPEG photo decode + resize on one core (measured on the dev machine)


@dataclass
class Speed:
    name: str
    device: str
    ms_per_image: float  # batch 1 latency
    images_per_s: float  # throughput at `batch`
    batch: int
    measured: float


def _cache_file():
    return paths.home() / "speed.json"


def _device_key(device: torch.device) -> str:
    return f"{describe_device(device)} | torch {torch.__version__}"


def load_speeds(device: torch.device | None = None) -> dict[str, Speed]:
    device = device or pick_device()
    try:
        table = json.loads(_cache_file().read_text()).get(_device_key(device), {})
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: Speed(**v) for k, v in table.items()}


def _store(device: torch.device, speed: Speed) -> None:
    f = _cache_file()
    f.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        data = {}
    data.setdefault(_device_key(device), {})[speed.name] = asdict(speed)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(f)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def measure(name: str, device: torch.device | None = None, batch: int | None = None, size: int = 224) -> Speed:
    """Random weights (speed does not depend on them), eval mode, the same fast path training uses."""
    device = device or pick_device()
    batch = batch or (64 if device.type == "cuda" else 16)
    dtype = fast_dtype(device)
    model = fuse_for_inference(models.get_model(name, weights=None)).to(device, memory_format=torch.channels_last)

    def timed(n: int, reps: int) -> float:
        x = torch.randn(n, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model(x)
            model(x)
            _sync(device)
            t = time.perf_counter()
            for _ in range(reps):
                model(x)
            _sync(device)
        return (time.perf_counter() - t) / reps

    one = timed(1, 5)
    many = timed(batch, 2 if device.type == "cpu" else 10)
    speed = Speed(name, str(device), round(one * 1000, 2), round(batch / many, 1), batch, time.time())
    _store(device, speed)
    return speed


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


def estimate_seconds(speed: Speed | None, n_train: int, n_val: int, strategy: str, epochs: int, views: int = 2) -> float | None:
    """Training time from the measured rate: embedding once for frozen backbones; ~3x inference cost per
    training image (forward + backward) every epoch otherwise. Decoding is counted once either way."""
    if speed is None:
        return None
    decode = (n_train + n_val) * DECODE_SECONDS_PER_IMAGE
    if strategy == "features":
        return decode + (n_train * views + n_val) / speed.images_per_s + 1.0
    return decode + epochs * (3 * n_train + n_val) / speed.images_per_s + 2.0
