"""The user's corrections to a dataset (drop an image, give it another class), kept beside it, never in it.

Files in the user's folder are never moved or rewritten: each choice goes into one JSON file per dataset in
TL Studio's home, and `apply_overrides` applies it whenever the dataset is loaded. A choice matches its image
by path, or by content hash when the file has since moved.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tl_core import paths
from tl_core.data.images import content_hash
from tl_core.data.sources import ImageDataset, Problem, Sample

DROP, RELABEL = "drop", "relabel"
DROPPED_REASON = "dropped by you (a correction kept beside the dataset in TL Studio's home; undo it to use the image)"


@dataclass(frozen=True)
class Override:
    path: str
    hash: str
    action: str  # drop | relabel
    label: str | None = None  # the class name, for relabel


def overrides_file(ds: ImageDataset) -> Path:
    key = hashlib.sha1(str(Path(ds.root).resolve()).encode()).hexdigest()[:16]
    return paths.home() / "overrides" / f"{key}.json"


def load_overrides(ds: ImageDataset) -> list[Override]:
    try:
        rows = json.loads(overrides_file(ds).read_text())["overrides"]
        return [Override(**r) for r in rows]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError):  # a damaged file must not block the dataset
        return []


def _save(ds: ImageDataset, rows: list[Override]) -> None:
    f = overrides_file(ds)
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps({"root": ds.root, "overrides": [asdict(o) for o in rows]}, indent=1))
    tmp.replace(f)


def set_override(ds: ImageDataset, path: str, action: str, label: str | None = None) -> Override:
    """Record a drop or relabel for one image, replacing any earlier choice for it."""
    if action not in (DROP, RELABEL):
        raise ValueError(f"action must be {DROP} or {RELABEL}")
    if action == RELABEL and label not in ds.classes:
        raise ValueError(f"{label!r} is not a class of {ds.name}; choose one of {', '.join(ds.classes)}.")
    new = Override(str(path), content_hash(path), action, label if action == RELABEL else None)
    _save(ds, [o for o in load_overrides(ds) if o.path != new.path and o.hash != new.hash] + [new])
    return new


def clear_override(ds: ImageDataset, path: str) -> None:
    _save(ds, [o for o in load_overrides(ds) if o.path != str(path)])


def _hash_or_none(path: str) -> str | None:
    try:
        return content_hash(path)
    except OSError:  # unreadable files are reported by the scan, not here
        return None


def apply_overrides(ds: ImageDataset) -> ImageDataset:
    """The dataset as the user corrected it: dropped images move to `skipped` (with the reason), relabelled
    ones get their new class. Without an override file this returns `ds` itself."""
    rows = load_overrides(ds)
    if not rows:
        return ds
    by_path = {o.path: o for o in rows}
    by_hash = {o.hash: o for o in rows}
    moved = {o.hash for o in rows} - {o.hash for o in rows if Path(o.path).exists()}  # only these need hashing
    samples: list[Sample] = []
    skipped = list(ds.skipped)
    for s in ds.samples:
        o = by_path.get(s.path)
        if o is None and moved:
            o = by_hash.get(_hash_or_none(s.path))
        if o is None:
            samples.append(s)
        elif o.action == DROP:
            skipped.append(Problem(s.path, DROPPED_REASON))
        elif o.label in ds.classes:
            label = ds.classes.index(o.label)  # a multi-label picture relabelled has exactly that label
            samples.append(replace(s, label=label, labels=(label,) if s.labels else ()))
        else:  # the class was renamed or removed since: keep the file's own label
            samples.append(s)
    return replace(ds, samples=samples, skipped=skipped)
