"""The training configuration: one dataclass, defaults that work, validation with clear messages."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from tl_core.backbones import DEFAULT_BACKBONE, STRATEGIES
from tl_core.pipeline import AUGMENTATIONS


@dataclass
class TrainConfig:
    backbone: str = DEFAULT_BACKBONE
    pretrained: bool = True  # False trains from scratch (clearly worse; for when no weights exist)
    weights_path: str | None = None  # a user's own weight file (safetensors or a plain state dict)
    strategy: str = "features"  # features | finetune (last K stages) | full
    finetune_stages: int = 2
    epochs: int = 10
    batch_size: int = 32
    lr: float | None = None  # None: 1e-3 for AdamW, 1e-2 for SGD (head); backbone gets lr * backbone_lr_factor
    backbone_lr_factor: float = 0.1
    optimizer: str = "adamw"  # adamw | sgd
    schedule: str = "cosine"  # cosine | onecycle
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    augment: str = "light"  # none | light | strong
    embedding_cache: bool = True  # frozen backbone: train the head on cached embeddings (False: run it every step)
    feature_views: int = 2  # with frozen backbone and augmentation: cached views per image (1 clean + rest augmented)
    patience: int = 5  # early stopping: epochs without a better val accuracy; 0 = off
    seed: int = 0
    amp: bool = True
    image_size: int | None = None  # None: the weights' own crop size
    device: str | None = None  # None: CUDA, else MPS, else CPU
    compile: bool = False  # torch.compile the model for fine-tuning (pays off on long GPU runs)
    val_fraction: float = 0.2  # for datasets without a validation folder

    @property
    def head_lr(self) -> float:
        return self.lr if self.lr is not None else (1e-2 if self.optimizer == "sgd" else 1e-3)

    def validate(self) -> TrainConfig:
        problems = []
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy must be one of {', '.join(STRATEGIES)}")
        if self.augment not in AUGMENTATIONS:
            problems.append(f"augment must be one of {', '.join(AUGMENTATIONS)}")
        if self.optimizer not in ("adamw", "sgd"):
            problems.append("optimizer must be adamw or sgd")
        if self.schedule not in ("cosine", "onecycle"):
            problems.append("schedule must be cosine or onecycle")
        if self.epochs < 1 or self.batch_size < 1 or self.feature_views < 1 or self.finetune_stages < 1:
            problems.append("epochs, batch size, feature views and fine-tune stages must be at least 1")
        if self.lr is not None and not 0 < self.lr < 10:
            problems.append("learning rate must be between 0 and 10")
        if self.image_size is not None and not 16 <= self.image_size <= 1024:
            problems.append("image size must be between 16 and 1024")
        if problems:
            raise ValueError("Invalid training settings: " + "; ".join(problems) + ".")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
