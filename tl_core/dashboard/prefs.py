"""The dashboard's choices (dataset spec, backbone, run): one typed value per browser tab.

Each browser tab keeps its own choices (two people on one server do not change each other's dataset), saved
under the tab's id (in its URL) so a refresh of that tab gets them back; the last choice made on this server is
only the default a new tab starts from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace

from tl_core import paths
from tl_core.data.sources import DatasetError, DatasetSpec
from tl_core.paths import write_json


@dataclass(frozen=True)
class Choices:
    dataset: DatasetSpec = DatasetSpec()
    backbone: str | None = None  # None: the recommended one
    run: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def with_changes(self, **changes) -> Choices:
        """Changes to the dataset spec's fields (source, val_fraction, split_seed, separator) or to backbone/run."""
        spec_fields = {k: changes.pop(k) for k in [f.name for f in fields(DatasetSpec)] if k in changes}
        spec = replace(self.dataset, **spec_fields) if spec_fields else self.dataset
        return replace(self, dataset=spec, **changes)


MAX_TABS = 64  # browser tabs remembered (oldest forgotten first)


def _file():
    return paths.home() / "prefs.json"


def _parse(d: dict) -> Choices:
    return Choices(DatasetSpec(**d["dataset"]), d.get("backbone"), d.get("run"))


def _read() -> dict:
    try:
        data = json.loads(_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def load(tab: str | None = None) -> Choices:
    """This browser tab's choices (a refresh keeps them), else the server's last choice, else the defaults."""
    data = _read()
    for d in ((data.get("tabs") or {}).get(tab) if tab else None, data):
        try:
            return _parse(d)
        except (KeyError, TypeError, DatasetError):
            continue
    return Choices()


def save(choices: Choices, tab: str | None = None) -> Choices:
    """As the server's default for new tabs, and as `tab`'s own."""
    paths.home().mkdir(parents=True, exist_ok=True)
    data = _read()
    tabs = data.get("tabs") if isinstance(data.get("tabs"), dict) else {}
    if tab:
        tabs.pop(tab, None)
        tabs[tab] = choices.to_dict()
    write_json(_file(), {**choices.to_dict(), "tabs": dict(list(tabs.items())[-MAX_TABS:])})
    return choices
