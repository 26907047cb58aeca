"""One uniform API over torchvision's classifiers (timm style): list, describe, build with a new head."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import cache, lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torchvision import models

from tl_core import paths
from tl_core.config import STRATEGIES


class WeightsUnavailable(RuntimeError):
    """Pretrained weights are neither cached nor downloadable; the message says which file goes where."""


@dataclass(frozen=True)
class Preprocessing:
    """What the chosen weights expect, and how a picture becomes their square (`fit`): stored with every run so
    prediction, export and resume use exactly what training used."""

    resize: int  # side of the decoded square (`tl_core.data.pipeline.square`)
    crop: int  # side the network sees: the centre of that square
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fit: str = "crop"  # crop: short side to `resize`, centre cut; letterbox: long side to `resize`, padded (FITS)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        """As stored in run.json (JSON has lists where the value holds tuples; a run without `fit` cropped)."""
        return cls(int(d["resize"]), int(d["crop"]), tuple(d["mean"]), tuple(d["std"]), d.get("fit", "crop"))

    @classmethod
    def imagenet(cls, crop: int = 224) -> Preprocessing:
        return cls(round(crop * 256 / 224), crop, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

    def at_size(self, crop: int) -> Preprocessing:
        return replace(self, resize=round(crop * self.resize / self.crop), crop=crop)

    def for_image_side(self, median_side: float) -> Preprocessing:
        """Images far smaller than the crop (under half of it) are resized whole to the crop: the weights' own
        centre crop cuts 12.5 % off each side, and on a 28 px image that border is a quarter of what there is."""
        return replace(self, resize=self.crop) if median_side < self.crop / 2 else self

    def letterboxed(self) -> Preprocessing:
        """The whole picture in the crop's square: its long side resized to the crop, the rest padded with `fill`.
        Nothing is cut off, so there is no margin to resize for either (resize = crop)."""
        return replace(self, resize=self.crop, fit="letterbox")

    @property
    def fill(self) -> tuple[int, int, int]:
        """The letterbox padding: the weights' mean colour, which normalises to (almost exactly) zero, the value the
        network's own convolutions pad every border with; black would normalise to about -2 and read as a dark
        frame around the picture."""
        return tuple(round(m * 255) for m in self.mean)

    def describe(self) -> str:
        if self.fit == "letterbox":
            return f"whole picture resized to fit {self.crop} px, padded to a square with the mean colour (letterbox)"
        if self.resize == self.crop:
            return f"whole image resized to {self.crop} px (no crop: the images are small)"
        return f"short side resized to {self.resize} px, centre crop {self.crop} px (the weights' own transform)"


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    family: str
    weights: str  # enum member, e.g. "MobileNet_V2_Weights.IMAGENET1K_V1"
    params_m: float
    size_mb: float
    gflops: float
    acc1: float
    acc5: float
    input_size: int
    weight_file: str
    cached: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _weights_enum(name: str):
    return models.get_model_weights(name)


def weight_file(weights) -> str:
    return os.path.basename(weights.url)


def is_cached(weights) -> bool:
    return (paths.torch_checkpoints() / weight_file(weights)).exists()


def pick_weights(name: str):
    """The model's DEFAULT weights, unless another ImageNet release of it is already cached (offline use)."""
    enum = _weights_enum(name)
    members = [enum.DEFAULT] + [w for w in enum if w != enum.DEFAULT]
    return next((w for w in members if is_cached(w)), enum.DEFAULT)


def preprocessing_of(weights) -> Preprocessing:
    t = weights.transforms()
    return Preprocessing(int(t.resize_size[0]), int(t.crop_size[0]), tuple(t.mean), tuple(t.std))


@lru_cache(maxsize=1)
def _names() -> tuple[str, ...]:
    return tuple(models.list_models(module=models))


def describe(name: str) -> BackboneInfo:
    weights = pick_weights(name)
    meta = weights.meta
    metrics = meta["_metrics"]["ImageNet-1K"]
    family = models.get_model_builder(name).__module__.rsplit(".", 1)[-1]
    return BackboneInfo(
        name=name,
        family=family,
        weights=str(weights),
        params_m=round(meta["num_params"] / 1e6, 2),
        size_mb=round(meta["_file_size"], 1),
        gflops=round(meta["_ops"], 2),
        acc1=metrics["acc@1"],
        acc5=metrics["acc@5"],
        input_size=preprocessing_of(weights).crop,
        weight_file=weight_file(weights),
        cached=is_cached(weights),
    )


def list_backbones() -> list[BackboneInfo]:
    """Every torchvision ImageNet classifier, from its weights enum (never a hand-written table)."""
    return [describe(n) for n in _names()]


def check_name(name: str) -> None:
    if name not in _names():
        raise ValueError(f"Unknown backbone {name!r}. `python -m tl_core backbones` lists the {len(_names())} available.")


# ---------------------------------------------------------------- heads and stages


def head_path(model: nn.Module) -> str:
    """The dotted name of the ImageNet classification layer (fc, classifier.1, heads.head, ...)."""
    last = None
    for name, m in model.named_modules():
        if "aux" in name.lower():
            continue
        if isinstance(m, nn.Linear) and m.out_features == 1000:
            last = name
        elif isinstance(m, nn.Conv2d) and m.out_channels == 1000:  # squeezenet's 1x1 conv head
            last = name
    if last is None:
        raise ValueError(f"No 1000-class head found in {type(model).__name__}.")
    return last


def bare(name: str, aux_logits: bool = False) -> nn.Module:
    """The architecture with random weights; GoogLeNet/Inception need their aux heads only to load a file."""
    extra = {"aux_logits": aux_logits, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    return models.get_model(name, weights=None, **extra)


@cache
def head_is_linear(name: str) -> bool:
    """Whether the classification layer is one linear layer (built on the meta device: no memory, no weights)."""
    with torch.device("meta"):
        model = bare(name)
    return isinstance(model.get_submodule(head_path(model)), nn.Linear)


def _drop_aux(model: nn.Module) -> None:
    """GoogLeNet/Inception carry auxiliary heads in train mode; transfer learning does not use them."""
    if hasattr(model, "aux_logits"):
        model.aux_logits = False
        for attr in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, attr):
                setattr(model, attr, None)


def replace_head(model: nn.Module, num_classes: int) -> str:
    path = head_path(model)
    old = model.get_submodule(path)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
    model.set_submodule(path, new)
    return path


def stages(model: nn.Module, head: str) -> list[str]:
    """The backbone cut into ordered stages: split any block holding over half the weights into its children.

    Works for every family without a table: resnet -> ..., layer3, layer4.0, layer4.1;
    mobilenet -> features.0 ... features.18; vit -> encoder.layers.encoder_layer_0 ... .
    """

    def size(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    total = size(model) - size(model.get_submodule(head))

    def holds_head(n: str) -> bool:
        return n == "" or head.startswith(n + ".")

    groups = [("", model)]
    while True:
        idx = next((i for i, (n, m) in enumerate(groups)
                    if any(True for _ in m.children()) and (holds_head(n) or size(m) > total / 2)), None)
        if idx is None:
            break
        prefix, m = groups[idx]
        kids = [(f"{prefix}.{n}" if prefix else n, c) for n, c in m.named_children()]
        groups[idx : idx + 1] = [(n, c) for n, c in kids if size(c) > 0 and n != head]
    return [n for n, _ in groups]


def apply_strategy(model: nn.Module, head: str, strategy: str, finetune_stages: int = 2) -> None:
    """Set requires_grad: features = head only; finetune = head + last K stages; full = everything."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}")
    for p in model.parameters():
        p.requires_grad = strategy == "full"
    if strategy == "finetune":
        for name in stages(model, head)[-finetune_stages:]:
            for p in model.get_submodule(name).parameters():
                p.requires_grad = True
    for p in model.get_submodule(head).parameters():
        p.requires_grad = True


def freeze_batchnorm(model: nn.Module, learning_too: bool = False) -> None:
    """After model.train(): BatchNorm keeps its ImageNet statistics (eval mode) in the frozen parts, and with
    `learning_too` in the parts that learn as well, which then learn only their scale and shift."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (learning_too or not any(p.requires_grad for p in m.parameters())):
            m.eval()


# ---------------------------------------------------------------- weights


def download_weights(weights, on_progress: Callable[[int, int], None] | None = None) -> Path:
    """Fetch into torch's hub cache with progress; offline, say exactly which file goes where."""
    dest = paths.torch_checkpoints() / weight_file(weights)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".partial")
    try:
        with urllib.request.urlopen(weights.url, timeout=15) as r, open(tmp, "wb") as out:
            total, done = int(r.headers.get("Content-Length", 0)), 0
            while chunk := r.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if on_progress:
                    on_progress(done, total)
        tmp.rename(dest)
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise WeightsUnavailable(
            f"Pretrained weights {weights} are not cached and could not be downloaded ({e}). "
            f"Put {weight_file(weights)} into {dest.parent} (or set TORCH_HOME), choose a backbone whose "
            "weights are cached, or train from scratch."
        ) from None
    return dest


def load_weight_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A user's weight file, never unpickling code: safetensors, or torch.load(weights_only=True)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path.name} is not a loadable weight file ({type(e).__name__}: {str(e)[:200]}).") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path.name} does not hold a state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_cached_weights(file: str | Path) -> dict[str, torch.Tensor]:
    """torchvision's file from the weight cache, never unpickling code. A file that is not plain tensors (a pickle put
    there, a damaged download) is one line naming it, not torch's page of advice about `weights_only`."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise WeightsUnavailable(f"{file} in the weight cache is not a plain weight file ({first}); delete it so it "
                                 "downloads again, or put torchvision's own file there.") from None


def load_into(model: nn.Module, state: dict[str, torch.Tensor], head: str) -> list[str]:
    """Load matching tensors, skip the head; refuse a file that matches almost nothing. Returns missing keys."""
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape and not k.startswith(head + ".")}
    backbone_keys = [k for k in own if not k.startswith(head + ".")]
    if len(usable) < 0.5 * len(backbone_keys):
        raise ValueError(f"The weight file matches only {len(usable)} of {len(backbone_keys)} backbone tensors; wrong architecture?")
    model.load_state_dict(usable, strict=False)
    return [k for k in backbone_keys if k not in usable]


def build(
    name: str,
    num_classes: int,
    pretrained: bool = True,
    weights_path: str | None = None,
    on_download: Callable[[int, int], None] | None = None,
) -> tuple[nn.Module, str, Preprocessing]:
    """A backbone with a fresh `num_classes` head: returns (model, head path, preprocessing)."""
    check_name(name)
    weights = pick_weights(name)
    model = bare(name, aux_logits=True)
    if pretrained and not weights_path:
        model.load_state_dict(load_cached_weights(download_weights(weights, on_download)))
    _drop_aux(model)
    head = replace_head(model, num_classes)
    if weights_path:
        load_into(model, load_weight_file(weights_path), head)
    return model, head, preprocessing_of(weights)


def recommend(rows: list[BackboneInfo], max_size_mb: float = 50.0) -> str:
    """The default to suggest: the most accurate small backbone whose weights are cached, else mobilenet_v3_large."""
    usable = [r for r in rows if r.cached and r.size_mb <= max_size_mb]
    return max(usable, key=lambda r: r.acc1).name if usable else "mobilenet_v3_large"
