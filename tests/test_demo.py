"""The built-in demo dataset: drawn deterministically, big enough to learn from."""

from __future__ import annotations

from tl_core.data.scan import load_dataset


def test_demo_dataset_is_deterministic_and_non_trivial(tmp_path):
    from tl_core.data.demo import CLASSES, build, demo_root

    ds = load_dataset("demo")
    assert ds.classes == sorted(CLASSES) and len(ds.split("train")) >= 250 and len(ds.split("val")) >= 50
    again = build(tmp_path / "again")
    first = sorted((demo_root() / "train" / "star").iterdir())[0]
    assert (again / "train" / "star" / first.name).read_bytes() == first.read_bytes()
