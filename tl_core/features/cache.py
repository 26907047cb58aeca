"""Frozen-backbone fast path: each image's embedding is computed once and kept on disk.

Entries are keyed by everything that changes the numbers (backbone, weights, preprocessing, view,
augmentation seed, dtype) and by the file's content hash, so stale entries can never be reused.
The cache is bounded: the least recently used groups are deleted past `MAX_CACHE_BYTES`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from tl_core import paths
from tl_core.devices import single_threaded_torch

MAX_CACHE_BYTES = 2 * 2**30


@contextlib.contextmanager
def headless(model: nn.Module, head: str) -> Iterator[nn.Module]:
    """The model with its head swapped for Identity: its output is the pooled embedding."""
    old = model.get_submodule(head)
    model.set_submodule(head, nn.Identity())
    try:
        yield model
    finally:
        model.set_submodule(head, old)


def embed(
    model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None
) -> torch.Tensor:
    """Forward in eval mode under autocast; returns float32 embeddings."""
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        return model(x).float().flatten(1)


def group_key(**parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


class EmbeddingCache:
    """One folder per key group; each write adds a safetensors shard: one [K, D] matrix whose rows are named
    by content hash in the file's metadata. One matrix per shard (never a tensor per image) keeps memory
    compact: thousands of small tensors fragment the heap and cost ~8x their size."""

    def __init__(self, key: str, root: Path | None = None, max_bytes: int = MAX_CACHE_BYTES):
        self.root = (root or paths.home() / "embeddings")
        self.dir = self.root / key
        self.max_bytes = max_bytes

    def load(self) -> dict[str, torch.Tensor]:
        """{content hash: embedding row} (rows are views into each shard's matrix)."""
        found: dict[str, torch.Tensor] = {}
        if not self.dir.exists():
            return found
        os.utime(self.dir)  # mark as recently used
        for shard in sorted(self.dir.glob("*.safetensors")):
            try:
                with safe_open(shard, "pt") as f:
                    names = json.loads(f.metadata()["hashes"])
                    matrix = f.get_tensor("embeddings")
            except Exception:  # a shard cut short by a crash is dropped, not trusted
                shard.unlink(missing_ok=True)
                continue
            found.update(zip(names, matrix))
        return found

    def known(self) -> set[str]:
        """Content hashes this cache holds, read from the shards' metadata only (no tensors loaded)."""
        found: set[str] = set()
        for shard in self.dir.glob("*.safetensors") if self.dir.exists() else ():
            try:
                with safe_open(shard, "pt") as f:
                    found.update(json.loads(f.metadata()["hashes"]))
            except Exception:
                continue
        return found

    def save(self, hashes: list[str], matrix: torch.Tensor) -> None:
        if not hashes:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{uuid.uuid4().hex}.tmp"
        save_file({"embeddings": matrix.contiguous()}, tmp, metadata={"hashes": json.dumps(hashes)})
        tmp.rename(self.dir / f"{time.time_ns()}.safetensors")
        self.evict()

    def evict(self) -> None:
        stats: dict[Path, tuple[float, int]] = {}  # group -> (last used, bytes)
        for d in self.root.iterdir():
            try:
                if d.is_dir():
                    stats[d] = (d.stat().st_mtime, sum(f.stat().st_size for f in d.glob("*")))
            except FileNotFoundError:  # another process (a torchrun rank, a second server) renamed or deleted it
                continue
        total = sum(size for _, size in stats.values())
        for d in sorted(stats, key=lambda d: stats[d][0]):
            if total <= self.max_bytes or d == self.dir:
                continue
            shutil.rmtree(d, ignore_errors=True)
            total -= stats[d][1]


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Fold BatchNorm into the convolutions (eval only): about 2x faster on CPU; on CPU also let oneDNN apply each
    convolution's ReLU/ReLU6 in the same kernel (`fuse_activations`). Falls back when not traceable."""
    from torch.fx.experimental.optimization import fuse

    try:
        folded = fuse(model.eval())
    except Exception:
        return model.eval()
    on_cpu = all(p.device.type == "cpu" for p in folded.parameters())
    return fuse_activations(folded) if on_cpu and _pointwise_convolution_works() else folded


class ConvActivation(nn.Module):
    """A Conv2d whose ReLU or ReLU6 oneDNN applies as a post-op of the convolution kernel: the activation costs no
    second pass over the output (in eager PyTorch it does: 17% of MobileNetV2's forward time here). The same op
    torch.compile's CPU backend emits for this pattern; results are identical (tested)."""

    def __init__(self, conv: nn.Conv2d, activation: str, scalars: list[float]):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.padding, self.stride, self.dilation = list(conv.padding), list(conv.stride), list(conv.dilation)
        self.groups, self.activation, self.scalars = conv.groups, activation, scalars

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if torch.is_autocast_enabled("cpu"):  # autocast does not reach this op: cast as it would for a convolution
            dtype = torch.get_autocast_dtype("cpu")
            w, b = w.to(dtype), None if b is None else b.to(dtype)
        return torch.ops.mkldnn._convolution_pointwise(x.to(w.dtype), w, b, self.padding, self.stride, self.dilation,
                                                       self.groups, self.activation, self.scalars, "")


def fuse_activations(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Every Conv2d (zero padding) whose only use is a ReLU or ReLU6 module becomes one `ConvActivation`."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        conv = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros" or isinstance(conv.padding, str) \
                or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        act = modules.get(user.target) if user.op == "call_module" else None
        if isinstance(act, nn.ReLU6):
            fused = ConvActivation(conv, "hardtanh", [0.0, 6.0])
        elif isinstance(act, nn.ReLU):
            fused = ConvActivation(conv, "relu", [])
        else:
            continue
        gm.add_submodule(node.target, fused)
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)
    gm.graph.lint()
    gm.recompile()
    return gm


@functools.cache
def _pointwise_convolution_works() -> bool:
    """The oneDNN op is internal to PyTorch: use it only where it exists and gives what conv + ReLU6 gives."""
    try:
        conv = nn.Conv2d(4, 4, 3, padding=1).eval()
        x = torch.randn(1, 4, 6, 6)
        with torch.no_grad():
            return torch.allclose(ConvActivation(conv, "hardtanh", [0.0, 6.0])(x), F.relu6(conv(x)), atol=1e-5)
    except Exception:
        return False


def inference_copy(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """A copy for embedding only: BatchNorm folded and, under bf16, the weights stored in bf16, so autocast does not
    cast every weight on every call (7-15% less CPU time per image for MobileNetV2). fp16 weights stay float32:
    folded BatchNorm scales can leave fp16's range, never bf16's."""
    fast = fuse_for_inference(model)
    if dtype != torch.bfloat16:
        return fast
    return (fast if fast is not model else copy.deepcopy(model)).to(dtype)


def compute_views(
    backbone: Callable[[], nn.Module],
    images: Callable[[torch.Tensor], torch.Tensor],
    views: Callable[[int, torch.Tensor], torch.Tensor],
    n_images: int,
    n_views: int,
    hashes: list[str],
    caches: list[EmbeddingCache],
    dtype: torch.dtype | None,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> torch.Tensor:
    """Embeddings of every (view, image): V x N x D, reading what the caches hold and computing the rest.

    `backbone()` gives the headless inference model (asked for only when something is not cached), `images(idx)`
    gives uint8 squares, `views(v, u8)` turns them into model input for view v, `batch_size` comes
    from `devices.inference_batch`. A short last batch is padded to a full one, so the CPU backend plans its
    kernels for one shape. The next batch is decoded in a thread while the backbone runs on this one (Pillow
    releases the GIL).
    """
    known = [c.load() for c in caches]
    need = [i for i in range(n_images) if any(hashes[i] not in k for k in known)]
    result: torch.Tensor | None = None

    def store(v: int, rows: list[int], values: torch.Tensor) -> None:
        nonlocal result
        if result is None:
            result = torch.empty(n_views, n_images, values.shape[1])
        result[v, rows] = values

    for v in range(n_views):
        rows = [i for i in range(n_images) if hashes[i] in known[v]]
        if rows:
            store(v, rows, torch.stack([known[v][hashes[i]] for i in rows]))
    if progress and need:  # the cached images count as done from the start
        progress(n_images - len(need), n_images)
    if need:
        fast = backbone()
        chunks = [need[s : s + batch_size] for s in range(0, len(need), batch_size)]
        with ThreadPoolExecutor(1, initializer=single_threaded_torch) as prefetch:
            pending = prefetch.submit(images, torch.tensor(chunks[0]))
            for k, idx in enumerate(chunks):
                u8 = pending.result()
                if k + 1 < len(chunks):
                    pending = prefetch.submit(images, torch.tensor(chunks[k + 1]))
                if should_stop():
                    raise InterruptedError
                pad = batch_size - len(idx)
                if pad:
                    u8 = torch.cat([u8, u8[:1].expand(pad, *u8.shape[1:])])
                for v in range(n_views):
                    store(v, idx, embed(fast, views(v, u8), dtype)[: len(idx)].cpu())
                if progress:  # counted over every image: cached ones are already done
                    progress(n_images - len(need) + k * batch_size + len(idx), n_images)
    assert result is not None
    for v, cache in enumerate(caches):
        new = [i for i in need if hashes[i] not in known[v]]
        cache.save([hashes[i] for i in new], result[v, new])
    return result
