"""The Dataset page through AppTest: the demo, server folders, uploads keyed by content, a dataset built
in the browser."""

from __future__ import annotations

import json

import streamlit as st
from helpers import ROOT, dataset_zip, open_page, solid
from PIL import Image
from streamlit.testing.v1 import AppTest


def test_dataset_page_summarises_and_checks_the_demo(ui):
    at = open_page("app_pages/1_Dataset.py")
    at.button(key="use_demo").click().run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Classes"] == "5" and metrics["train images"] == "300" and metrics["val images"] == "80"
    assert metrics["Problems"] == "0" and at.success
    assert at.radio(key="dataset_kind").options[:4] == ["Built-in demo", "Folder or CSV on the server", "Upload a .zip",
                                                        "torchvision dataset"]
    assert len(at.get("plotly_chart")) == 1 and len(at.image) == 12  # one page of samples
    assert any(c.value == "Image sizes: all 380 images are 96 x 96 pixels." for c in at.caption)  # no one-dot chart
    at.radio(key="dataset_kind").set_value("torchvision dataset").run()
    at.button(key="use_tv").click().run()
    assert "needs internet access" in at.error[0].value


def test_dataset_page_refuses_folders_outside_the_data_root(ui, monkeypatch, shapes_folder):
    monkeypatch.setenv("TL_STUDIO_DATA_ROOT", str(shapes_folder.parent))
    at = open_page("app_pages/1_Dataset.py")
    at.radio(key="dataset_kind").set_value("Folder or CSV on the server").run()
    at.selectbox(key="server_folder").set_value("shapes").run()
    at.button(key="use_folder").click().run()
    assert {m.label: m.value for m in at.metric}["Classes"] == "3"
    assert any("reason" in df.value and df.value.reason.str.contains("not an image").any() for df in at.dataframe)


def test_uploaded_zip_becomes_the_dataset(ui, tmp_path, shapes_folder):
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in shapes_folder.rglob("*.png"):
            zf.write(p, f"upl/{p.relative_to(shapes_folder)}")
    at = open_page("app_pages/1_Dataset.py")
    at.radio(key="dataset_kind").set_value("Upload a .zip").run()
    at.file_uploader(key="zip_upload").set_value(("upl.zip", buf.getvalue(), "application/zip")).run()
    at.button(key="use_zip").click().run()
    assert not at.exception and {m.label: m.value for m in at.metric}["Classes"] == "3"
    Image.open(next(shapes_folder.rglob("*.png")))  # the source is untouched


def test_build_a_dataset_in_the_browser(ui, tmp_path, monkeypatch):
    import io

    monkeypatch.setenv("TL_STUDIO_DATA_ROOT", str(tmp_path / "data"))
    at = open_page("app_pages/1_Dataset.py")
    at.radio(key="dataset_kind").set_value("Build in the browser").run()
    at.text_input(key="build_name").set_value("pets").run()
    for name in ("cats", "dogs"):
        at.text_input(key="build_class").set_value(name).run()
        at.button(key="build_add_class").click().run()
        assert at.text_input(key="build_class").value == ""  # the field is ready for the next name

    def png(colour) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (40, 40), colour).save(buf, "PNG")
        return buf.getvalue()

    def uploader():
        return next(u for u in at.get("file_uploader") if u.key and u.key.startswith("build_files"))

    for cls, colours in (("cats", [(200, 0, 0), (190, 10, 0)]), ("dogs", [(0, 0, 200), (0, 10, 190)])):
        at.selectbox(key="build_target").set_value(cls).run()
        uploader().set_value([(f"{cls}{i}.png", png(c), "image/png") for i, c in enumerate(colours)]
                             + [("junk.png", b"not an image", "image/png")]).run()
        at.button(key="build_add_images").click().run()
        assert any(r"junk\.png" in e.value and "Not added" in e.value for e in at.error)  # the name as literal text
        assert not uploader().value and at.button(key="build_add_images").disabled  # nothing carries over to the next class
    at.selectbox(key="build_target").set_value("dogs").run()
    uploader().set_value([("cats0-again.png", png((200, 0, 0)), "image/png")]).run()  # a cat picture offered as a dog
    at.button(key="build_add_images").click().run()
    assert any(r"cats0\-again\.png" in e.value and "already in 'cats'" in e.value for e in at.error)
    counts = next(df.value for df in at.dataframe if list(df.value.columns) == ["class", "images"])
    assert dict(zip(counts["class"], counts["images"])) == {"cats": 2, "dogs": 2}
    at.button(key="build_use").click().run()
    assert {m.label: m.value for m in at.metric}["Classes"] == "2"
    assert sorted(p.name for p in (tmp_path / "data" / "pets").iterdir()) == ["cats", "dogs"]


def test_dataset_page_keys_uploads_by_content(tmp_path, monkeypatch, home):
    tiny = tmp_path / "tiny"
    for c in ("u", "v"):
        for i in range(2):
            solid(tiny / c / f"{i}.png", (90 * i, 20, 40))
    (home / "prefs.json").write_text(json.dumps({"dataset": str(tiny)}))
    monkeypatch.setenv("TL_STUDIO_RUNS", str(tmp_path / "runs"))
    st.cache_data.clear()
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()
    at.switch_page("app_pages/1_Dataset.py").run()
    at.radio(key="dataset_kind").set_value("Upload a .zip").run()
    for classes in (["a", "b"], ["a", "b", "c"]):  # the same file name, new bytes
        at.file_uploader(key="zip_upload").set_value(("data.zip", dataset_zip(classes), "application/zip")).run()
        at.button(key="use_zip").click().run()
        assert not at.exception, at.exception
        assert {m.label: m.value for m in at.metric}["Classes"] == str(len(classes))


def test_a_dropped_outlier_can_be_undone_and_tables_name_files_not_paths(ui, shapes_folder, with_real_weights):
    import numpy as np

    from tl_core.dashboard import prefs
    from tl_core.data.sources import DatasetSpec

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(shapes_folder / "circle" / "noise.png")
    prefs.save(prefs.Choices(DatasetSpec(str(shapes_folder)), "mobilenet_v2"))
    at = open_page("app_pages/1_Dataset.py")
    at.number_input(key="health_size").set_value(64)
    at.selectbox(key="health_fit").set_value("letterbox").run()  # the declared choice, as on the Train page
    at.button(key="health_run").click().run()
    assert not at.exception, at.exception
    drop = next(b for b in at.button if b.key and b.key.startswith("drop_outlier_"))
    path = drop.key.removeprefix("drop_outlier_")
    table = next(d.value for d in at.dataframe if "z" in d.value.columns)  # the outlier table
    assert not any(str(shapes_folder) in str(v) for v in table.file) and "path" not in table.columns
    drop.click().run()
    assert at.button(key=f"undo_outlier_{path}")  # the Problems row's "undo it there" holds
    at.button(key=f"undo_outlier_{path}").click().run()
    assert at.button(key=f"drop_outlier_{path}") and not at.exception

