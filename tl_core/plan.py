"""What a configuration means for one dataset and one backbone, decided in one place.

The trainer, the time estimate, `compare`, the data-health check, the learning-rate finder and the pages all ask
this module: which pixels the backbone sees (the weights' transform, the chosen size, centre crop or letterbox, the
small-image rule), which path trains (a fitted head on cached embeddings, or the network itself), how many feature
views, how many epochs at which side, whether classes are weighted, and whether the run can learn at all. None of
them works any of it out again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tl_core.config import TrainConfig
from tl_core.data.balance import inverse_frequency
from tl_core.data.pipeline import epoch_sizes
from tl_core.data.scan import is_imbalanced, median_short_side
from tl_core.models import backbones
from tl_core.models.backbones import Preprocessing


def cannot_learn(config: TrainConfig) -> str | None:
    """Why this configuration cannot learn anything, or None: a frozen backbone of random weights gives features
    that carry no information, so a head fitted on them stays at chance."""
    if config.strategy == "features" and not config.pretrained and not config.weights_path:
        return ("Feature extraction needs pretrained or own weights: a frozen backbone of random weights cannot learn. "
                "Turn pretrained weights on, give a weight file, or choose fine-tuning.")
    return None


def check(config: TrainConfig) -> TrainConfig:
    """Every option against its declaration, the backbone against the catalogue, and whether the run can learn:
    the CLI, the job manager, the pages and the trainer refuse the same things with the same words."""
    config.validate()
    backbones.check_name(config.backbone)
    if reason := cannot_learn(config):
        raise ValueError(reason)
    return config


def weights_preprocessing(config: TrainConfig) -> Preprocessing:
    """The weights' own transform at the chosen size, before the dataset is looked at."""
    prep = backbones.preprocessing_of(backbones.pick_weights(config.backbone))
    return prep.at_size(config.image_size) if config.image_size else prep


def preprocessing(config: TrainConfig, image_paths: list[str]) -> Preprocessing:
    """The pixels every consumer embeds or trains on for these images: the weights' transform, with images far
    smaller than the crop resized whole (`Preprocessing.for_image_side`), or with `fit` letterbox the whole
    picture padded to a square (`Preprocessing.letterboxed`: nothing is cut, so the small-image rule has nothing
    to add)."""
    prep = weights_preprocessing(config)
    if config.fit == "letterbox":
        return prep.letterboxed()
    return prep.for_image_side(median_short_side(image_paths))


def feature_views(config: TrainConfig) -> int:
    """Views per training image on the fitted-head path: augmented views need an augmentation."""
    return config.feature_views if config.augment != "none" else 1


def fits_head(config: TrainConfig) -> bool:
    """Feature extraction with cached embeddings fits a linear head outright; a head that is not one linear layer
    (SqueezeNet's convolution) trains by gradient steps on the frozen network instead."""
    return config.strategy == "features" and config.embedding_cache and backbones.head_is_linear(config.backbone)


def unused_options(config: TrainConfig) -> frozenset[str]:
    """Settings that change nothing for this configuration (the Train page shows them disabled)."""
    unused = {"epochs", "batch_size", "lr"} if fits_head(config) else set()  # a fitted head has no epochs or step size
    unused |= {"finetune_stages"} if config.strategy != "finetune" else set()
    unused |= {"progressive_resize", "keep_bn_statistics"} if config.strategy == "features" else set()  # nothing in it trains
    return frozenset(unused)


def class_weights(config: TrainConfig, counts: Sequence[int]) -> tuple[float, ...] | None:
    """Per-class loss weights for training images counted `counts` (class order), or None for plain averaging.

    "auto" weights classes by inverse frequency once the largest class has IMBALANCED_RATIO times the images of
    the smallest (the same cut at which the scan warns); "weights" always, "none" never."""
    if not counts or config.balance == "none" or (config.balance == "auto" and not is_imbalanced(counts)):
        return None
    return tuple(round(w, 6) for w in inverse_frequency(counts))


@dataclass(frozen=True)
class Plan:
    """Every derived decision of one run."""

    config: TrainConfig
    preprocessing: Preprocessing
    fitted_head: bool
    views: int
    epochs: int
    sizes: tuple[int, ...]  # training side per epoch (progressive resizing); validation is always at the crop
    class_weights: tuple[float, ...] | None = None  # per-class loss weights (`class_weights`); None: every image alike


def make(config: TrainConfig, prep: Preprocessing, counts: Sequence[int] = ()) -> Plan:
    """The plan for a run whose pixels are decided (`preprocessing`, or the run's own on resume); `counts`: its
    training images per class."""
    fitted = fits_head(config)
    epochs = 1 if fitted else config.epochs  # the fitted head is solved outright in one step
    resize = config.progressive_resize if config.strategy != "features" else 1.0  # a frozen backbone gains nothing
    return Plan(config, prep, fitted, feature_views(config), epochs,
                tuple(epoch_sizes(prep, epochs, resize, config.augment)), class_weights(config, counts))


def for_images(config: TrainConfig, image_paths: list[str]) -> Plan:
    return make(config, preprocessing(config, image_paths))
