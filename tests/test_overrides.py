"""The user's drop / relabel choices: kept beside the dataset, applied on load, following a file that moves."""

import pytest

from tl_core.data.overrides import DROP, DROPPED_REASON, RELABEL, apply_overrides, clear_override, overrides_file, set_override
from tl_core.data.sources import from_folder


def test_drop_and_relabel_apply_without_touching_the_files(shapes_folder):
    ds = from_folder(shapes_folder)
    before = sorted(p.name for p in shapes_folder.rglob("*"))
    assert apply_overrides(ds) is ds  # nothing chosen yet: the very same dataset
    dropped, relabelled = ds.samples[0], ds.samples[1]
    assert ds.classes[relabelled.label] != "triangle"
    set_override(ds, dropped.path, DROP)
    set_override(ds, relabelled.path, RELABEL, "triangle")
    out = apply_overrides(ds)
    paths = {s.path: s for s in out.samples}
    assert dropped.path not in paths and any(p.path == dropped.path and p.reason == DROPPED_REASON for p in out.skipped)
    assert out.classes[paths[relabelled.path].label] == "triangle"
    assert paths[relabelled.path].split == relabelled.split
    assert len(out.samples) == len(ds.samples) - 1
    assert sorted(p.name for p in shapes_folder.rglob("*")) == before  # no file moved, renamed or written
    assert overrides_file(ds).exists() and not overrides_file(ds).is_relative_to(shapes_folder)

    clear_override(ds, dropped.path)
    assert dropped.path in {s.path for s in apply_overrides(ds).samples}


def test_a_choice_follows_its_file_by_content_hash(shapes_folder):
    ds = from_folder(shapes_folder)
    target = next(s for s in ds.samples if "circle" in s.path)
    set_override(ds, target.path, DROP)
    moved = shapes_folder / "circle" / "renamed.png"
    (shapes_folder / "circle" / target.path.rsplit("/", 1)[1]).rename(moved)
    again = from_folder(shapes_folder)
    out = apply_overrides(again)
    assert str(moved) not in {s.path for s in out.samples}
    assert len(out.samples) == len(again.samples) - 1


def test_bad_choices_get_one_clear_message_and_a_damaged_file_is_ignored(shapes_folder):
    ds = from_folder(shapes_folder)
    with pytest.raises(ValueError, match="not a class"):
        set_override(ds, ds.samples[0].path, RELABEL, "hexagon")
    with pytest.raises(ValueError, match="action"):
        set_override(ds, ds.samples[0].path, "rename")
    overrides_file(ds).parent.mkdir(parents=True, exist_ok=True)
    overrides_file(ds).write_text("{not json")
    assert apply_overrides(ds) is ds
