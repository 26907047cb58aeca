"""torch.distributed glue for `torchrun ... -m tl_core train`: one model trained by N processes (DDP).

torchrun starts one process per GPU (or CPU slot) and tells each its place through environment variables
(RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT). Without them (WORLD_SIZE unset or 1) every helper here is
the identity and torch.distributed is never initialised: one process trains exactly as it always has.
Rank 0 is the main process: it alone scans the data, writes the run folder and talks to the terminal; the
others learn what they need from it (`on_main`) and agree with it through small all-reduces.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and prints."""
    return rank() == 0


def size() -> int:
    """How many processes train this model: 1 unless a process group is up."""
    return world_size() if active() else 1


def backend() -> str | None:
    return dist.get_backend() if active() else None


def active() -> bool:
    """Several processes train one model together (and the process group is up)."""
    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def device_for(device: torch.device) -> torch.device:
    """Under torchrun each rank takes its own GPU, `cuda:LOCAL_RANK`; other devices are as they were."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", local_rank())
    return device


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """NCCL between GPUs, gloo between CPU processes, for the length of one run; nothing in a single process
    (or when a caller already set a group up, which it then also tears down)."""
    if world_size() <= 1 or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # ranks wait for rank 0 while it alone scans the data or fits the head: longer than the 10 min default
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=1))
    try:
        yield
    finally:
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    """NCCL reduces tensors on the GPU, gloo on the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(*values: float) -> tuple[float, ...]:
    """The sums over every rank of a few numbers (loss sums, correct and image counts), the same on each."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return tuple(t.tolist())


def all_max(value: int) -> int:
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any (a stop request, wherever it arrived)."""
    return bool(all_max(int(flag)))


def gather(value: T) -> list[T]:
    """Every rank's `value`, in rank order, on every rank (pickled: for modest objects such as embeddings)."""
    if not active():
        return [value]
    out: list = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def _sendable(e: Exception) -> Exception:
    """The exception itself when it survives pickling, else a RuntimeError carrying its message."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and hand its result to every rank; if it raises, every rank raises the same,
    so no rank is left waiting for a process that has given up (a refused run, a stop during the head fit)."""
    if not active():
        return fn()
    box: list = [None]
    if is_main():
        try:
            box[0] = (True, fn())
        except Exception as e:
            dist.broadcast_object_list([(False, _sendable(e))], src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def shard(items: list[T]) -> list[T]:
    """This rank's share of a list (every WORLD_SIZE-th item from position RANK); all of it in one process."""
    return items[rank()::world_size()] if active() else items


def per_rank_batch(batch_size: int) -> int:
    """`--batch-size` is the global batch: each of N processes takes batch/N images per step (rounded up), so
    the steps per epoch, the learning rate and the schedule mean what they mean in one process."""
    return math.ceil(batch_size / size())


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around the model when several processes train it: gradients are averaged over
    ranks in backward, and rank 0's parameters and buffers are broadcast so every copy starts and stays equal."""
    if not active():
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
