"""Images to normalised batches: decode once (threads, JPEG draft), then crop/flip/jitter whole batches on the device.

Decoding dominates the copied tutorial loop (every epoch re-reads and re-resizes every JPEG); here each file
is decoded once to a uint8 `S x S` tensor (S = the weights' resize size; centre-cropped or letterboxed as the
run's `Preprocessing.fit` says) and augmentation is tensor math.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tl_core.config import AUGMENTATIONS
from tl_core.data.images import BadImage, open_rgb
from tl_core.data.sources import Problem, Sample
from tl_core.devices import memory_format, single_threaded_torch
from tl_core.models.backbones import Preprocessing

CROP_AREA = {"light": (0.35, 1.0), "strong": (0.15, 1.0)}  # random resized crops: the fraction of the square kept
MAX_DECODED_BYTES = 3 * 2**30


def decode_square(path: str, prep: Preprocessing) -> np.ndarray:
    return square(open_rgb(path, min_side=prep.resize), prep)


def square(img: Image.Image, prep: Preprocessing) -> np.ndarray:
    """The `prep.resize`-px uint8 square every consumer starts from (H x W x 3), as `prep.fit` says: the centre
    of the picture (`centre_square`) or all of it, padded (`letterbox`)."""
    if prep.fit == "letterbox":
        return letterbox(img, prep.resize, prep.fill)
    return centre_square(img, prep.resize)


def _resized(img: Image.Image, w: int, h: int) -> torch.Tensor:
    """The picture at w x h as an H x W x 3 uint8 tensor (bilinear, antialiased).

    torch's uint8 antialiased resize gives Pillow's result to within two grey levels (torchvision's v2 resize uses
    it) at about a third of Pillow's time on a 500 x 375 photo, which was half the cost of decoding one."""
    hwc = torch.from_numpy(np.array(img))  # a writable copy: torch does not wrap Pillow's read-only buffer
    if (w, h) == img.size:
        return hwc
    out = F.interpolate(hwc.permute(2, 0, 1)[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0)


def centre_square(img: Image.Image, size: int) -> np.ndarray:
    """Resize the short side to `size` and centre-crop a square: the weights' own transform."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = int(round((nw - size) / 2)), int(round((nh - size) / 2))
    return _resized(img, nw, nh)[top : top + size, left : left + size].numpy()


def letterbox(img: Image.Image, size: int, fill: tuple[int, int, int]) -> np.ndarray:
    """Resize the long side to `size` and pad the short one to a centred square with `fill`: every pixel of the
    picture stays, the subject of a wide photo at its far edge too."""
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    left, top = int(round((size - nw) / 2)), int(round((size - nh) / 2))
    out = torch.tensor(fill, dtype=torch.uint8).expand(size, size, 3).clone()
    out[top : top + nh, left : left + nw] = _resized(img, nw, nh)
    return out.numpy()


def decode_many(
    samples: Sequence[Sample], prep: Preprocessing, progress: Callable[[int, int], None] | None = None
) -> tuple[torch.Tensor, list[int], list[Problem]]:
    """Decode in threads (Pillow releases the GIL). Returns (N x 3 x S x S uint8 (S = prep.resize), kept indices,
    problems).

    The workers hand back finished C x S x S tensors and this thread only collects them: a torch copy here would
    wake this thread's OpenMP team, which then spins on the cores the decoders need (twice the time on 2 cores)."""
    decoded, kept, problems = [], [], []
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers, initializer=single_threaded_torch) as pool:
        results = pool.map(lambda s: _try_decode(s.path, prep), samples)
        for i, (chw, err) in enumerate(results):
            if err:
                problems.append(Problem(samples[i].path, err))
            else:
                decoded.append(chw)
                kept.append(i)
            if progress and (i % 16 == 0 or i == len(samples) - 1):
                progress(i + 1, len(samples))
    out = torch.stack(decoded) if decoded else torch.empty((0, 3, prep.resize, prep.resize), dtype=torch.uint8)
    return out, kept, problems


def decode_filled(samples: Sequence[Sample], prep: Preprocessing) -> tuple[torch.Tensor, list[int], list[Problem]]:
    """Decode a batch keeping its shape: a file that fails becomes zeros at its position.

    Returns (N x 3 x S x S uint8, positions that failed, problems); for batches whose labels are already fixed.
    """
    u8, kept, problems = decode_many(samples, prep)
    if not problems:
        return u8, [], []
    full = torch.zeros((len(samples), 3, prep.resize, prep.resize), dtype=torch.uint8)
    full[kept] = u8
    kept_set = set(kept)
    return full, [i for i in range(len(samples)) if i not in kept_set], problems


def _try_decode(path: str, prep: Preprocessing) -> tuple[torch.Tensor | None, str | None]:
    try:
        return torch.from_numpy(decode_square(path, prep)).permute(2, 0, 1).contiguous(), None
    except BadImage as e:
        return None, str(e)
    except Exception as e:  # a hostile file must never stop training
        return None, f"cannot decode ({type(e).__name__})"


class Batcher:
    """Turns uint8 square batches into normalised model input on `device`, augmented or centre-cropped."""

    def __init__(self, prep: Preprocessing, device: torch.device, augment: str = "light"):
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}")
        self.prep, self.device, self.augment = prep, device, augment
        self.mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255

    def _to_device(self, u8: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda" and u8.device.type == "cpu":
            u8 = u8.pin_memory()
        return u8.to(self.device, non_blocking=True).float()

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).contiguous(memory_format=memory_format(self.device))

    def _centre(self, u8: torch.Tensor) -> torch.Tensor:
        x = self._to_device(u8)
        s, c = x.shape[-1], self.prep.crop
        o = int(round((s - c) / 2))
        return x[..., o : o + c, o : o + c]

    def eval(self, u8: torch.Tensor) -> torch.Tensor:
        return self._normalise(self._centre(u8))

    def train(self, u8: torch.Tensor, generator: torch.Generator | None = None, size: int | None = None) -> torch.Tensor:
        """Random resized crops with flips (and jitter when strong) at `size` px (default: the crop size)."""
        if self.augment == "none":
            x = self._centre(u8)
            if size and size != x.shape[-1]:
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            return self._normalise(x)
        x = self._to_device(u8)
        c = size or self.prep.crop
        if c < self.prep.crop:  # shrink the source first (antialiased): smaller crops then do not alias
            side = round(x.shape[-1] * c / self.prep.crop)
            x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        n, s = x.shape[0], x.shape[-1]
        g = generator
        area = torch.empty(n).uniform_(*CROP_AREA[self.augment], generator=g) * s * s
        ratio = torch.exp(torch.empty(n).uniform_(np.log(3 / 4), np.log(4 / 3), generator=g))
        w = torch.sqrt(area * ratio).clamp(max=s)
        h = torch.sqrt(area / ratio).clamp(max=s)
        x0 = torch.rand(n, generator=g) * (s - w)
        y0 = torch.rand(n, generator=g) * (s - h)
        # crop + resize + flip as one affine resampling: plain PyTorch kernels on every device (torchvision's
        # roi_align needs its own CUDA kernels, JIT-compiled on first use: 25 s on an H200 before this)
        flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 1, 1] = w / s * flip, h / s
        theta[:, 0, 2], theta[:, 1, 2] = (x0 + w / 2) / s * 2 - 1, (y0 + h / 2) / s * 2 - 1
        grid = F.affine_grid(theta.to(self.device), [n, 3, c, c], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if self.augment == "strong":  # brightness, contrast and saturation jitter of +-30%
            b, ct, sat = (torch.empty(n, 1, 1, 1).uniform_(0.7, 1.3, generator=g).to(self.device) for _ in range(3))
            grey = x.mean(1, keepdim=True)
            x = grey + (x - grey) * sat
            m = x.mean((1, 2, 3), keepdim=True)
            x = ((x - m) * ct + m) * b
            x = x.clamp(0, 255)
        return self._normalise(x)


PROGRESSIVE_MIN_SIDE = 112  # smaller, a pretrained backbone's features fall apart (last maps 4x4 or less): ants vs
#                             bees, 2 epochs at 128 px: 0.778 starting at 64 px, 0.889 starting at 112 px


def matched_side(prep: Preprocessing, augment: str) -> int:
    """The training side at which objects look as large as validation shows them (FixRes, Touvron et al. 2019).

    `Batcher.train` cuts a crop of area fraction a (uniform in `CROP_AREA`) from the S-px square (S = prep.resize)
    and shows it at T px: objects grow by T / (sqrt(a) S), while validation's centre crop shows them at 1x. So
    T = S E[sqrt(a)]: 208 px for light augmentation at 224 (256-px squares), 189 for strong. Training at the crop
    size instead shows every object ~8% larger than validation will, and costs 16% more per image."""
    if augment not in CROP_AREA:
        return prep.crop
    lo, hi = CROP_AREA[augment]
    mean_sqrt_area = (2 / 3) * (hi**1.5 - lo**1.5) / (hi - lo)
    return min(prep.crop, round(prep.resize * mean_sqrt_area))


def progressive_size(crop: int, epoch: int, epochs: int, start: float, end: int | None = None) -> int:
    """The training image side of `epoch` (1-based): `start` x crop at the first epoch, growing linearly to `end`
    px (default: the crop) at the last, in steps of 16 px (8 px under 192; each new shape costs the CPU backend a
    plan), never under 112 px. Low resolution early is fastai's progressive resizing; FixRes explains why it does
    not hurt: random resized crops enlarge objects, so smaller training images show them at the size they have in
    the full-size validation images (`matched_side`)."""
    if start >= 1 or epochs <= 1:
        return crop
    end = end or crop
    side = crop * start + (end - crop * start) * min(epoch - 1, epochs - 1) / (epochs - 1)
    step = 16 if crop >= 192 else 8
    return min(crop, max(PROGRESSIVE_MIN_SIDE, step * round(side / step)))


def epoch_sizes(prep: Preprocessing, epochs: int, start: float, augment: str) -> list[int]:
    """Each epoch's training side: from `start` x crop up to the FixRes-matched side (`matched_side`) by the last."""
    last = matched_side(prep, augment)
    return [progressive_size(prep.crop, e, epochs, start, last) for e in range(1, epochs + 1)]


def batches(n: int, batch_size: int, shuffle: bool, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]
