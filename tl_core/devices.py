"""Pick the best device and its mixed-precision dtype in a few lines (nanoGPT style)."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import lru_cache

import torch


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA, else Apple MPS, else CPU; an explicit request wins but must exist."""
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("CUDA was requested but no CUDA GPU is available; use --device cpu.")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError("MPS was requested but Apple MPS is not available; use --device cpu.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU does bf16 math natively (AVX-512 BF16 or AMX); then bf16 is ~3x faster."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Training autocast dtype: bf16 where the GPU has it, fp16 (with a scaler) otherwise, none on CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return None


def fast_dtype(device: torch.device) -> torch.dtype | None:
    """Autocast dtype for the speed paths (frozen-backbone embedding, fine-tuning on CPU).

    On a CPU with native bf16 this is bf16: the equivalence tests show it keeps predictions.
    """
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    return amp_dtype(device)


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last where it pays from the first step: on CPU. On CUDA its depthwise-conv kernels cost seconds
    per new input shape on first use (measured on an H200: 8.4 s vs 1.0 s for MobileNetV2's first step), more
    than a small dataset's whole run gains."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def inference_batch(device: torch.device) -> int:
    """Images per forward pass when nothing learns (embedding, validation, prediction). On CPU small batches keep
    each layer's activations in cache: 16 costs 0.6x the time per image of 64 for MobileNetV2 in bf16 (0.7x for
    EfficientNet-B0, 0.85x for ResNet-50; measured in BENCHMARKS.md, "Inference batch on CPU"). A GPU wants large batches."""
    return 16 if device.type == "cpu" else 128


def single_threaded_torch() -> None:
    """Make torch's CPU ops run on one thread, in the calling thread only (a thread pool's initializer).

    Decoding threads resize with torch. Left alone, every such thread becomes the master of its own OpenMP team,
    and those teams spin on the same two cores as the backbone's: decoding ants vs bees took twice as long and
    the backbone beside it slowed down too. `torch.set_num_threads` would change every thread; OpenMP's own
    `omp_set_num_threads` changes only the caller's. Without an OpenMP runtime in the process this does nothing."""
    torch.get_num_threads()  # torch sets each new thread's OpenMP count on its first use: let it happen first
    try:
        ctypes.CDLL(None).omp_set_num_threads(1)
    except (AttributeError, OSError, TypeError):  # TypeError: Windows has no CDLL(None)
        pass


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    return dtype == torch.float16


@dataclass(frozen=True)
class DeviceInfo:
    kind: str
    name: str
    memory_gb: float | None
    capability: str | None
    amp: str | None

    def describe(self) -> str:
        mem = f", {self.memory_gb:.0f} GB" if self.memory_gb else ""
        cap = f", compute {self.capability}" if self.capability else ""
        amp = f"mixed precision {self.amp}" if self.amp else "mixed precision off"
        return f"{self.kind.upper()}: {self.name}{mem}{cap} ({amp})"


def device_info(device: torch.device | None = None) -> DeviceInfo:
    """What people see in the sidebar and `backbones --measure`: which device and which precision."""
    device = device or pick_device()
    dtype = fast_dtype(device)
    amp = str(dtype).removeprefix("torch.") if dtype else None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return DeviceInfo("cuda", props.name, props.total_memory / 2**30, f"{props.major}.{props.minor}", amp)
    if device.type == "mps":
        return DeviceInfo("mps", "Apple GPU", None, None, amp)
    return DeviceInfo("cpu", f"{_cpu_name()}, {torch.get_num_threads()} threads", None, None, amp)


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def describe_device(device: torch.device | None = None) -> str:
    return device_info(device).describe()


OUT_OF_MEMORY_TEXTS = ("out of memory", "can't allocate memory", "not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failure on any device, so every one gets the same clear message.

    CUDA raises torch.OutOfMemoryError, MPS says "out of memory", but a failed CPU allocation is a plain
    RuntimeError ("DefaultCPUAllocator: can't allocate memory ...") and Python's own is MemoryError.
    """
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return any(t in text for t in OUT_OF_MEMORY_TEXTS)
