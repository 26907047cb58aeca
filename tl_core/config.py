"""The training configuration, declared once: each option's type, default, choices and help live here.

The CLI flags (`add_arguments`), the Train page's widgets and validation are all derived from these declarations,
so the command line and the dashboard can set exactly the same things. Defaults that depend on the strategy
(epochs) follow the strategy unless the user sets them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

DEFAULT_BACKBONE = "mobilenet_v2"
COMPARED_BACKBONES = ("mobilenet_v3_small", DEFAULT_BACKBONE, "resnet18", "efficientnet_b0")  # `compare` without names
STRATEGIES = ("features", "finetune", "full")
AUGMENTATIONS = ("none", "light", "strong")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "onecycle")
FITS = ("crop", "letterbox")  # how a picture becomes the backbone's square (tl_core.plan.preprocessing decides it)
DEVICES = ("cpu", "cuda", "mps")
BENCH_MODES = ("features", "full")  # the strategies the copied tutorial loop has (it fine-tunes no partial network)
EXPORT_FORMATS = ("safetensors", "onnx", "onnx-int8", "torchscript")  # written and checked by tl_core.use.export
EPOCHS_BY_STRATEGY = {"features": 10, "finetune": 5, "full": 5}
LABEL_SEPARATOR = ";"  # how a label CSV's cell joins several labels, unless the dataset spec names another
BALANCES = ("auto", "weights", "none")
IMBALANCED_RATIO = 3.0  # largest over smallest training class: at or past it the scan warns and "auto" weights classes


@dataclass(frozen=True)
class Option:
    """How one option is shown and checked: label and help for people, bounds and choices for validation."""

    label: str
    help: str
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    advanced: bool = True  # shown under "More settings" on the Train page
    page: bool = True  # False: set from elsewhere on the page (backbone: Backbones page)


def option(default: Any, label: str, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"option": Option(label, help, **kw)})


@dataclass
class TrainConfig:
    backbone: str = option(DEFAULT_BACKBONE, "Backbone", "torchvision classifier name (`backbones` lists them)", page=False)
    strategy: str = option("features", "Strategy", "features: frozen backbone, new head; finetune: last K stages; full: everything",
                           choices=STRATEGIES, advanced=False)
    epochs: int | None = option(None, "Epochs", "passes over the training images (default: 10 for features, 5 otherwise)",
                                low=1, high=500, advanced=False)
    batch_size: int = option(32, "Batch size", "images per training step (lower it when memory runs out)", low=1, high=1024, advanced=False)
    lr: float | None = option(None, "Learning rate (head)", "blank: 1e-3 for AdamW, 1e-2 for SGD; the backbone gets lr x factor",
                              low=1e-7, high=10.0, advanced=False)
    finetune_stages: int = option(2, "Stages to fine-tune (K)",
                                  "with strategy finetune: how many final stages (blocks) learn; the earlier ones stay frozen",
                                  low=1, high=20, advanced=False)
    pretrained: bool = option(True, "Pretrained weights", "off: train from scratch (far less accurate; when no weights exist)")
    weights_path: str | None = option(None, "Own weight file", "a .safetensors or state-dict file on the server (never unpickled)")
    optimizer: str = option("adamw", "Optimizer", "AdamW or SGD with momentum 0.9", choices=OPTIMIZERS)
    schedule: str = option("cosine", "Schedule", "cosine with warm-up, or one-cycle", choices=SCHEDULES)
    backbone_lr_factor: float = option(0.1, "Backbone lr factor", "backbone learning rate = head lr x this", low=0.0, high=10.0)
    weight_decay: float = option(1e-4, "Weight decay", "L2 penalty of the optimiser: keeps weights small against over-fitting",
                                 low=0.0, high=1.0)
    label_smoothing: float = option(0.1, "Label smoothing",
                                    "targets of 1 - x for the right class, x shared by the others: less over-confident answers",
                                    low=0.0, high=0.5)
    balance: str = option("auto", "Class balance", f"auto: weight each class by the inverse of its share of the training "
                          f"images when the largest class has {IMBALANCED_RATIO:g}x the images of the smallest or more; "
                          "weights: always; none: never (every image counts the same, so the big class wins ties)",
                          choices=BALANCES)
    augment: str = option("light", "Augmentation", "random crops and flips (light), plus colour jitter (strong)", choices=AUGMENTATIONS)
    embedding_cache: bool = option(True, "Cache embeddings", "frozen backbone: train the head on cached embeddings (off: run it each step)")
    feature_views: int = option(1, "Feature views", "frozen backbone: cached views per training image: 1 = the clean view; more "
                                "adds augmented views (used where cross-validation finds they help; each costs a backbone pass)",
                                low=1, high=16)
    patience: int = option(5, "Early-stopping patience", "epochs without a better val accuracy before stopping; 0 = off", low=0, high=100)
    seed: int = option(0, "Training seed", "initialisation, batch order and augmentation (never the split)", low=0, high=2**31 - 1)
    amp: bool = option(True, "Mixed precision", "bf16/fp16 autocast where the device has it")
    image_size: int | None = option(None, "Image size", "blank: the weights' own crop size", low=16, high=1024)
    fit: str = option("crop", "Fit to square", "crop: short side resized, centre cropped (the weights' own transform; cuts "
                      "off what lies near the edges of wide or tall pictures); letterbox: the whole picture resized to fit, "
                      "padded with the mean colour", choices=FITS)
    progressive_resize: float = option(0.5, "Progressive resizing", "fine-tuning: the first epoch trains at this fraction of the "
                                       "image size, growing by the last epoch to the size at which random crops show objects "
                                       "as large as validation does (1 = off; validation is always at full size)",
                                       low=0.25, high=1.0)
    keep_bn_statistics: bool = option(True, "Keep BatchNorm statistics", "fine-tuning: BatchNorm layers keep ImageNet's mean "
                                      "and variance and learn only their scale and shift, as Keras' fine-tuning guide advises "
                                      "for small datasets (off, or training from scratch: re-estimated from every batch)")
    device: str | None = option(None, "Device", "blank: CUDA, else Apple MPS, else CPU", choices=DEVICES)
    compile: bool = option(False, "torch.compile", "compile the model for fine-tuning (pays off on long GPU runs)")

    def __post_init__(self) -> None:
        if self.epochs is None and self.strategy in EPOCHS_BY_STRATEGY:
            self.epochs = EPOCHS_BY_STRATEGY[self.strategy]

    @property
    def head_lr(self) -> float:
        return self.lr if self.lr is not None else (1e-2 if self.optimizer == "sgd" else 1e-3)

    def validate(self) -> TrainConfig:
        """Every option against its declaration; one message listing every problem. The backbone's name is the
        catalogue's to check (`tl_core.plan.check`), so reading a constant here never imports torch."""
        problems = []
        for f in fields(self):
            opt: Option = f.metadata["option"]
            value = getattr(self, f.name)
            if value is None:
                continue
            if opt.choices and value not in opt.choices:
                problems.append(f"{f.name} must be one of {', '.join(opt.choices)}")
            elif opt.low is not None and not (isinstance(value, (int, float)) and opt.low <= value <= opt.high):
                problems.append(f"{f.name} must be between {opt.low:g} and {opt.high:g}")
        if problems:
            raise ValueError("Invalid training settings: " + "; ".join(problems) + ".")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def options() -> list[tuple[str, type, Option, Any]]:
    """(name, value type, declaration, default) for every option, in declaration order."""
    out = []
    for f in fields(TrainConfig):
        kind = str(f.type).replace(" | None", "")
        out.append((f.name, {"int": int, "float": float, "bool": bool}.get(kind, str), f.metadata["option"], f.default))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per option (`--batch-size`, `--amp/--no-amp`); unset flags stay None so the declared default applies."""
    add_options(parser, [name for name, *_ in options()])


def add_options(parser: argparse.ArgumentParser, names: Iterable[str], **helps: str) -> None:
    """Flags for the chosen options only, each as declared: its type, bounds, choices and help, so every command
    that takes `--device` or `--image-size` checks it as `train` does. `helps` rewords an option's help for a
    command where it means a little more (resume's `--epochs`). Unset flags stay None: the declared default applies."""
    declared = {name: (kind, opt, default) for name, kind, opt, default in options()}
    for name in names:
        kind, opt, default = declared[name]  # a KeyError for a name nobody declared
        flag, help = "--" + name.replace("_", "-"), helps.get(name, opt.help)
        help = f"{help} (default: {default})" if default is not None and name not in helps else help
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help)
        else:
            parser.add_argument(flag, type=_parser(kind, opt), choices=opt.choices, default=None, help=help)


def _parser(kind: type, opt: Option) -> Callable[[str], Any]:
    """A flag's value as its declared type, within its declared bounds: a value outside them is one argparse line,
    before anything is loaded or allocated."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
        if opt.low is not None and not opt.low <= value <= opt.high:  # NaN fails this too
            raise argparse.ArgumentTypeError(f"must be between {opt.low:g} and {opt.high:g} (got {text})")
        return value

    parse.__name__ = kind.__name__
    return parse


def to_arguments(config: TrainConfig) -> list[str]:
    """The flags that `add_arguments` + `from_arguments` turn back into exactly this config (a job's command line)."""
    out = []
    for name, kind, _, _ in options():
        value, flag = getattr(config, name), "--" + name.replace("_", "-")
        if value is None:
            continue
        out.append((flag if value else "--no-" + flag[2:]) if kind is bool else f"{flag}={value}")
    return out


def from_arguments(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{name: getattr(args, name) for name, *_ in options() if getattr(args, name, None) is not None})
