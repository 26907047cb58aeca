"""The dashboard's choices (dataset spec, backbone, run): one typed value per browser tab.

Each browser tab keeps its own choices (two people on one server do not change each other's dataset);
the last choice made on this server is saved to disk only as the default a new tab starts from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from tl_core import paths
from tl_core.data.sources import DatasetError, DatasetSpec
from tl_core.train.runs import write_json


@dataclass(frozen=True)
class Choices:
    dataset: DatasetSpec = DatasetSpec()
    backbone: str | None = None  # None: the recommended one
    run: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def with_changes(self, **changes) -> Choices:
        """Changes to the dataset spec's fields (source, val_fraction, split_seed) or to backbone/run."""
        spec_fields = {k: changes.pop(k) for k in ("source", "val_fraction", "split_seed") if k in changes}
        spec = replace(self.dataset, **spec_fields) if spec_fields else self.dataset
        return replace(self, dataset=spec, **changes)


def _file():
    return paths.home() / "prefs.json"


def load() -> Choices:
    try:
        d = json.loads(_file().read_text())
        return Choices(DatasetSpec(**d["dataset"]), d.get("backbone"), d.get("run"))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, DatasetError):
        return Choices()


def save(choices: Choices) -> Choices:
    paths.home().mkdir(parents=True, exist_ok=True)
    write_json(_file(), choices.to_dict())
    return choices
