"""Where Grad-CAM looks in each backbone family: one table next to the backbone registry.

CNNs: the last block whose output is still a spatial feature map. Transformers need their tokens laid back
out as a grid: Swin's stages are channels-last; ViT's classifier reads only the class token of the last
block's output, so the map is taken at that block's first LayerNorm, where the patch tokens still feed it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision import models


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _vit_tokens(x: torch.Tensor) -> torch.Tensor:
    patches = x[:, 1:]  # drop the class token
    side = math.isqrt(patches.shape[1])
    return patches.reshape(x.shape[0], side, side, x.shape[2]).permute(0, 3, 1, 2)


def _last_child(model: nn.Module, parent: str) -> str:
    return f"{parent}.{list(model.get_submodule(parent).named_children())[-1][0]}"


def _vit_last_block(model: nn.Module) -> str:
    return _last_child(model, "encoder.layers") + ".ln_1"


@dataclass(frozen=True)
class CamTarget:
    layer: str | Callable[[nn.Module], str]  # a module name, or how to find it in a built model
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None  # tokens -> N x C x H x W

    def layer_name(self, model: nn.Module) -> str:
        return self.layer if isinstance(self.layer, str) else self.layer(model)


TARGETS: dict[str, CamTarget] = {
    "alexnet": CamTarget("features"),
    "convnext": CamTarget("features"),
    "densenet": CamTarget("features"),
    "efficientnet": CamTarget("features"),
    "googlenet": CamTarget("inception5b"),
    "inception": CamTarget("Mixed_7c"),
    "maxvit": CamTarget(lambda m: _last_child(m, "blocks")),  # a ModuleList: hook its last block
    "mnasnet": CamTarget("layers"),
    "mobilenetv2": CamTarget("features"),
    "mobilenetv3": CamTarget("features"),
    "regnet": CamTarget("trunk_output"),
    "resnet": CamTarget("layer4"),
    "shufflenetv2": CamTarget("conv5"),
    "squeezenet": CamTarget("features"),
    "swin_transformer": CamTarget("features", _nhwc),
    "vgg": CamTarget("features"),
    "vision_transformer": CamTarget(_vit_last_block, _vit_tokens),
}


def family_of(backbone: str) -> str:
    """torchvision's module name for the architecture: resnet, mobilenetv3, vision_transformer, ..."""
    return models.get_model_builder(backbone).__module__.rsplit(".", 1)[-1]


def cam_target(backbone: str) -> CamTarget:
    family = family_of(backbone)
    if family not in TARGETS:
        raise ValueError(f"No Grad-CAM layer is known for the {family} family ({backbone}).")
    return TARGETS[family]
