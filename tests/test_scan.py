import shutil

from conftest import solid

from tl_core.data.scan import scan
from tl_core.data.sources import DatasetSpec


def test_scan_reports_every_kind_of_problem_with_a_reason(tmp_path, shapes_folder):
    root = tmp_path / "ds"
    for split in ("train", "val"):
        for cls in ("circle", "square"):
            shutil.copytree(shapes_folder / cls, root / split / cls)
    shutil.copytree(shapes_folder / "triangle", root / "train" / "triangle")  # missing from val
    (root / "train" / "empty").mkdir()  # empty class
    solid(root / "train" / "circle" / "tiny.png", (1, 2, 3), size=(8, 8))
    (root / "train" / ".ipynb_checkpoints").mkdir()
    report = scan(DatasetSpec(str(root)))
    reasons = {(p.path.rsplit("/", 1)[-1], p.reason.split(" (")[0]) for p in report.problems}
    assert ("broken.jpg", "not an image") in reasons or any(r[0] == "broken.jpg" for r in reasons)
    assert ("notes.txt", "not an image file") in reasons
    assert (".DS_Store", "hidden or system file") in reasons
    assert ("empty", "empty class: no usable image") in reasons
    assert ("triangle", "class missing from the val split") in reasons
    assert any(name == "tiny.png" and "very small" in why for name, why in reasons)
    dups = [p for p in report.problems if p.reason.startswith("same image in several splits")]
    assert len(dups) == 40  # 20 circle + 20 square files copied into both splits
    assert report.counts["train"]["circle"] == 11 and report.counts["val"]["triangle"] == 0
    assert {im.mode for im in report.images} == {"RGB"}
