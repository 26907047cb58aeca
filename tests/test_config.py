"""TrainConfig's one declaration of options: every option survives the command line a job is started with."""

from __future__ import annotations

from tl_core.cli.main import parser
from tl_core.config import TrainConfig, from_arguments, options, to_arguments


def test_every_option_survives_the_command_line():
    """A job's command line is derived from its TrainConfig: every option, set away from its default, comes back."""
    changed = {}
    for name, kind, opt, default in options():
        if opt.choices:
            changed[name] = next(c for c in reversed(opt.choices) if c != default)
        elif kind is bool:
            changed[name] = not default
        elif kind is int:
            changed[name] = int(opt.low) + 3
        elif kind is float:
            changed[name] = opt.low + (opt.high - opt.low) / 30  # in bounds, and a float that only repr() keeps exactly
        else:
            changed[name] = "-odd path=with spaces.safetensors"
    changed["backbone"] = "resnet18"
    config = TrainConfig(**changed)
    args = parser().parse_args(["train", "demo", *to_arguments(config)])
    assert from_arguments(args) == config
    assert all(getattr(config, f) != d for f, _, _, d in options() if d is not None)  # really all changed
    default = TrainConfig()
    assert from_arguments(parser().parse_args(["train", "demo", *to_arguments(default)])) == default
