"""The dashboard's choices (dataset, backbone, run) kept on disk, so a refresh or a new tab keeps them."""

from __future__ import annotations

import json

from tl_core import paths
from tl_core.runs import write_json

DEFAULTS = {"dataset": "demo", "val_fraction": 0.2, "seed": 0, "backbone": None, "run": None}


def load() -> dict:
    try:
        return {**DEFAULTS, **json.loads((paths.home() / "prefs.json").read_text())}
    except (OSError, json.JSONDecodeError):
        return dict(DEFAULTS)


def save(**changes) -> dict:
    prefs = {**load(), **changes}
    paths.home().mkdir(parents=True, exist_ok=True)
    write_json(paths.home() / "prefs.json", prefs)
    return prefs
