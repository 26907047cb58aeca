"""Why the model decided: Grad-CAM heat maps (torchcam) for any backbone family, and their overlay on the image.

torchcam rather than grad-cam: it needs only torch, numpy, Pillow and matplotlib (grad-cam pulls OpenCV,
scikit-learn and scipy), and its `reshape_transform` lays transformer tokens out as a grid, so ViT and Swin
work with the same call as the CNNs. The layer per family is chosen in `tl_core.models.cam_targets`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from torchcam.methods import GradCAM
from torchcam.utils import overlay_mask

from tl_core.data.images import open_rgb, to_rgb
from tl_core.data.pipeline import square
from tl_core.models.cam_targets import CamTarget, cam_target
from tl_core.use.predict import ImageInput, Predictor


@dataclass
class Explanation:
    class_name: str  # the class the map explains
    probability: float  # its calibrated probability
    heatmap: np.ndarray  # crop x crop, float32 in [0, 1]: where the evidence for the class is
    image: np.ndarray  # crop x crop x 3 uint8: exactly the pixels the model saw

    def overlay(self, alpha: float = 0.5) -> Image.Image:
        """The heat map in colour over the image (red: strong evidence for the class)."""
        return overlay_mask(Image.fromarray(self.image), Image.fromarray(self.heatmap, mode="F"), alpha=alpha)


def _pixels(predictor: Predictor, image: ImageInput) -> torch.Tensor:
    img = to_rgb(image) if isinstance(image, Image.Image) else open_rgb(image, min_side=predictor.prep.resize)
    return torch.from_numpy(square(img, predictor.prep)).permute(2, 0, 1)[None]


def _names(classes: list[str], shown: int = 20) -> str:
    """The classes in one line: the first `shown`, then how many more."""
    more = f" and {len(classes) - shown} more" if len(classes) > shown else ""
    return ", ".join(repr(c) for c in classes[:shown]) + more


def explain(predictor: Predictor, image: ImageInput, class_name: str | None = None,
            target: CamTarget | None = None) -> Explanation:
    """Grad-CAM for `class_name` (default: the predicted class; for a multi-label run any of its labels, each with
    its own map from its own logit). Raises BadImage for an unreadable image, and
    ValueError naming the run's classes for a class it does not have."""
    if class_name is not None and class_name not in predictor.classes:
        raise ValueError(f"The run has no class {class_name!r}; its classes are {_names(predictor.classes)}.")
    if target is None:
        if predictor.backbone is None:
            raise ValueError("This model does not say which backbone it is; pass a CamTarget.")
        target = cam_target(predictor.backbone)
    model, u8 = predictor.model, _pixels(predictor, image)
    x = predictor.batcher.eval(u8).float()
    with GradCAM(model, target_layer=target.layer_name(model), reshape_transform=target.reshape) as cam, torch.enable_grad():
        scores = model(x.requires_grad_())
        probs = predictor.targets.probabilities(scores.detach().float() / predictor.temperature)[0]  # a label's own sigmoid
        index = int(probs.argmax()) if class_name is None else predictor.classes.index(class_name)
        raw = cam(index, scores, normalized=False)[0].float().nan_to_num(0)
    heat = F.interpolate(raw[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0].clamp(min=0)
    top = float(heat.max())
    heat = (heat / top if top > 0 else heat).cpu().numpy().astype(np.float32)  # relative scale: any magnitude
    c = predictor.prep.crop
    o = int(round((u8.shape[-1] - c) / 2))  # the same centre crop as Batcher.eval
    seen = u8[0, :, o : o + c, o : o + c].permute(1, 2, 0).numpy()
    return Explanation(predictor.classes[index], float(probs[index]), heat, seen)
