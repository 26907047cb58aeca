"""Where TL Studio keeps its files; every location can be moved with an environment variable."""

from __future__ import annotations

import json
import os
from pathlib import Path


def home() -> Path:
    """Caches (demo data, embeddings, speed table) live here, never inside a run."""
    return Path(os.environ.get("TL_STUDIO_HOME", Path.home() / ".cache" / "tl_studio"))


def runs_dir() -> Path:
    return Path(os.environ.get("TL_STUDIO_RUNS", "runs"))


def data_root() -> Path:
    """The only server folder the dashboard may browse for datasets."""
    return Path(os.environ.get("TL_STUDIO_DATA_ROOT", "data")).resolve()


def torch_checkpoints() -> Path:
    """torchvision's weight cache: `$TORCH_HOME/hub/checkpoints`."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def write_json(path: Path, data) -> None:
    """Atomic: a reader (the dashboard) never sees half a file, a crash never leaves one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)
