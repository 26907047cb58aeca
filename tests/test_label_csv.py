"""Datasets described by a label CSV: columns found by name, paths kept inside the CSV's folder, bad rows listed
with their line numbers, an optional split column, label sets found by themselves."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from helpers import solid

from tl_core.data.scan import scan
from tl_core.data.sources import DatasetError, DatasetSpec, from_csv, list_files, server_sources


def pictures(root: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        solid(root / name, (40 * i % 255, 90, 200 - 20 * i % 200), size=(80, 70))


def test_a_csv_of_files_and_labels_is_a_dataset_and_bad_rows_are_problems_with_their_lines(tmp_path):
    pictures(tmp_path, [f"img/{i}.png" for i in range(6)])
    (tmp_path / "outside.png").write_bytes((tmp_path / "img" / "0.png").read_bytes())
    (tmp_path / "labels.csv").write_text(
        "file,class\n"          # line 1: other accepted header names
        "img/0.png,ant\n"
        "img/1.png,bee\n"
        "img/2.png,\n"          # line 4: no label
        "img/9.png,ant\n"       # line 5: no such file
        "../labels.csv,ant\n"   # line 6: out of the CSV's folder
        "/etc/passwd,bee\n"     # line 7: absolute
        "img/3.png,ant\n"
        "img/3.png,bee\n"       # line 9: listed twice
        "img/4,bee\n"           # no extension: img/4.png
        "labels.csv,bee\n")     # line 11: not a picture
    ds = from_csv(tmp_path / "labels.csv")
    assert ds.classes == ["ant", "bee"] and not ds.multi_label and ds.split_source == "unsplit"
    assert {Path(s.path).name: ds.classes[s.label] for s in ds.samples} == {"0.png": "ant", "1.png": "bee", "3.png": "ant",
                                                                             "4.png": "bee"}
    reasons = [p.reason for p in ds.skipped]
    for line, words in ((4, "no label"), (5, "not found"), (6, "outside the CSV's folder"), (7, "outside the CSV's folder"),
                        (9, "listed again (first on line 8)"), (11, "not an image file")):
        assert any(r.startswith(f"line {line} of labels.csv") and words in r for r in reasons), (line, reasons)
    assert "passwd" not in str([s.path for s in ds.samples])


def test_labels_joined_by_the_separator_make_a_multi_label_dataset_split_by_label_set(tmp_path):
    names = [f"p{i}.png" for i in range(30)]
    pictures(tmp_path, names)
    sets = ["ant", "bee", "ant;bee"]
    (tmp_path / "labels.csv").write_text("image,labels\n" + "".join(f"{n},{sets[i % 3]}\n" for i, n in enumerate(names)))
    report = scan(DatasetSpec(str(tmp_path / "labels.csv"), 0.2, 0))
    assert report.multi_label and report.classes == ["ant", "bee"]
    assert report.counts["train"] == {"ant": 16, "bee": 16} and report.counts["val"] == {"ant": 4, "bee": 4}
    both = [im for im in report.images if im.labels == (0, 1)]
    assert len(both) == 10 and sum(im.split == "val" for im in both) == 2  # each label set keeps the fraction
    assert report.to_dict()["files"][0]["labels"]
    # another separator: ';' is then part of a label's name, '|' joins
    (tmp_path / "pipes.csv").write_text("image,labels\n" + "".join(f"{n},{sets[i % 3].replace(';', '|')}\n"
                                                                   for i, n in enumerate(names)))
    assert scan(DatasetSpec(str(tmp_path / "pipes.csv"), separator="|")).multi_label
    assert not scan(DatasetSpec(str(tmp_path / "labels.csv"), separator="|")).multi_label


def test_a_split_column_keeps_its_split_and_an_unknown_split_is_a_problem(tmp_path):
    names = [f"p{i}.png" for i in range(8)]
    pictures(tmp_path, names)
    rows = [f"{n},{'ab'[i % 2]},{'train' if i < 4 else 'validation'}" for i, n in enumerate(names)] + ["p0.png,a,holdout"]
    (tmp_path / "labels.csv").write_text("picture,label,split\n" + "\n".join(rows) + "\n")
    report = scan(str(tmp_path / "labels.csv"))
    assert report.split_source == "folders" and report.split_counts() == {"train": 4, "val": 4}
    assert any("line 10" in p.reason and "unknown split 'holdout'" in p.reason for p in report.skipped)


def test_a_csv_without_recognisable_columns_or_rows_is_one_clear_line(tmp_path):
    (tmp_path / "x.csv").write_text("name;what\nfoo;bar\n")
    with pytest.raises(DatasetError, match="needs a picture column"):
        from_csv(tmp_path / "x.csv")
    (tmp_path / "y.csv").write_text("image,labels\nmissing.png,a\n")
    with pytest.raises(DatasetError, match="lists no usable picture.*not found"):
        from_csv(tmp_path / "y.csv")
    with pytest.raises(DatasetError, match="separator"):
        DatasetSpec("x.csv", separator="\n")


def test_a_zip_with_a_label_csv_at_its_top_is_read_as_that_csv(tmp_path, home):
    pictures(tmp_path, ["a.png", "b.png", "c.png", "d.png"])
    archive = tmp_path / "kaggle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for n in "abcd":
            zf.write(tmp_path / f"{n}.png", f"kaggle/train_images/{n}.png")
        zf.writestr("kaggle/train.csv", "image_id,labels\ntrain_images/a,x\ntrain_images/b,y\ntrain_images/c,x y\n"
                                        "train_images/d,y\n")
    ds = list_files(str(archive), " ")
    assert ds.multi_label and ds.classes == ["x", "y"] and len(ds.samples) == 4


def test_the_dashboard_offers_label_csvs_inside_the_data_root(tmp_path):
    pictures(tmp_path / "root" / "set", ["a.png"])
    (tmp_path / "root" / "set" / "labels.csv").write_text("image,labels\na.png,x\n")
    (tmp_path / "root" / "top.csv").write_text("image,labels\n")
    assert server_sources(tmp_path / "root") == ["set", "set/labels.csv", "top.csv"]
