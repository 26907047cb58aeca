"""The home page (streamlit_app.py) through AppTest: the three steps, the sidebar and Quick start."""

from __future__ import annotations

import re

import streamlit as st
from helpers import APP, open_page, tiny_runs, use_backbone
from PIL import Image
from streamlit.testing.v1 import AppTest

from app_pages.ui.shared import plain

INJECTION = "![x](pixel.png) [Sign in again](phish)"


def test_home_shows_the_three_steps_and_the_sidebar(ui):
    at = open_page()
    assert at.title[0].value == "TL Studio"
    assert any("CPU" in m.value for m in at.markdown)
    steps = [m.value for m in at.markdown if m.value.startswith("#### ")]
    assert steps == ["#### :material/check_circle: 1. Data", "#### :material/radio_button_unchecked: 2. Backbone",
                     "#### :material/radio_button_unchecked: 3. Train and use"]  # the demo is usable; nothing chosen or trained
    assert any("5 classes, 300 training and 80 validation images" in m.value for m in at.markdown)
    assert any(m.value == r"**demo \(shapes\)**" for m in at.sidebar.markdown)  # names as literal text
    assert not any("/" in m.value for m in at.sidebar.markdown if m.value.startswith("**"))  # names, never paths


def test_quick_start_trains_the_chosen_backbone_on_the_chosen_data(ui):
    use_backbone("mobilenet_v3_small")
    at = open_page()
    assert at.button(key="quick_start").label == r"Quick start: train mobilenet_v3_small on demo \(shapes\)"
    at.button(key="quick_start").click().run()
    assert not at.exception, at.exception
    from app_pages.ui.shared import job_manager

    job = job_manager().current()
    s = job and job.snapshot()
    assert s and (s.dataset.source, s.config.strategy, s.config.pretrained, s.config.backbone) == (
        "demo", "features", True, "mobilenet_v3_small")  # the good defaults: a fitted head on pretrained features
    assert at.title[0].value == "Train" and any(s.value.startswith("Job 1") for s in at.subheader)  # sent to watch it
    assert any(r"demo \(shapes\)" in c.value for c in at.caption)  # the job panel names its dataset


def markdown_texts(at: AppTest) -> list[str]:
    """Every string the page hands to Streamlit's Markdown renderer (main area and sidebar, labels included)."""
    kinds = ("markdown", "caption", "title", "subheader", "success", "error", "info", "warning")
    texts = [e.value for kind in kinds for e in at.get(kind)] + [e.value for kind in kinds for e in at.sidebar.get(kind)]
    return texts + [b.label for b in at.button]



def test_folder_and_class_names_are_shown_as_plain_text(ui, tmp_path, monkeypatch):
    data = tmp_path / "data" / INJECTION
    for cls in (INJECTION, "bees"):
        (data / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(data / cls / f"{i}.png")
    from tl_core.dashboard import prefs
    from tl_core.data.sources import DatasetSpec

    prefs.save(prefs.Choices(dataset=DatasetSpec(str(data))))  # the server's default for every new session
    link = re.compile(r"(?<!\\)\]\(|(?<!\\)!\[")  # a Markdown link or image that would be followed
    for page in (None, "app_pages/1_Dataset.py", "app_pages/3_Train.py"):
        texts = markdown_texts(open_page(page))
        assert any(r"\!\[x\]\(pixel\.png\)" in t for t in texts), page  # the name is there, escaped
        assert not [t for t in texts if link.search(t)], page



def test_an_unwritable_home_is_one_line_on_every_page(ui, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    with monkeypatch.context() as m:
        m.setenv("TL_STUDIO_HOME", str(tmp_path / "a-file" / "home"))  # cannot be created: as if read-only
        said = []
        for page in (None, "app_pages/1_Dataset.py", "app_pages/3_Train.py", "app_pages/4_Predict.py"):
            at = AppTest.from_file(APP, default_timeout=120).run()
            if page:
                at.switch_page(page).run()
            errors = [e.value for e in at.error]
            assert not at.exception and len(errors) <= 1 and all("TL Studio cannot write" in e for e in errors), page
            said += errors
        assert len(said) >= 2  # Home and Dataset write (the demo, the scan cache) and say so; the others just work
    st.cache_resource.clear()  # the job manager was never made


def test_home_and_predict_name_the_runs_dataset(ui, shapes_folder, monkeypatch):
    """Step 3 speaks of the chosen dataset's runs only; the Predict picker tells runs apart by data, backbone, date."""
    monkeypatch.setenv("TL_STUDIO_DATA_ROOT", str(shapes_folder.parent))
    tiny_runs(ui / "runs", 1, str(shapes_folder))
    at = open_page()
    step3 = next(m.value for m in at.markdown if m.value.startswith("#### ") and "3. Train" in m.value)
    assert "check_circle" not in step3 and any("No trained model yet" in m.value for m in at.markdown)  # demo: no run yet
    demo_run = tiny_runs(ui / "runs", 1)[0]
    at.run()
    assert any(f"Last trained on this dataset: **{plain(demo_run)}**" in m.value for m in at.markdown)
    at.switch_page("app_pages/4_Predict.py").run()
    assert not at.exception, at.exception
    picker = next(s for s in at.selectbox if s.label == "Run")
    shown = list(picker.options)  # as the browser shows them (format_func applied)
    assert any(o.startswith(f"{shapes_folder.name} · mobilenet_v3_small · ") for o in shown), shown
    assert any(o.startswith("demo") and demo_run in o for o in shown), shown



def test_a_refresh_keeps_this_tabs_dataset_whatever_another_tab_chose(ui, shapes_folder, monkeypatch):
    monkeypatch.setenv("TL_STUDIO_DATA_ROOT", str(shapes_folder.parent))
    first = open_page("app_pages/1_Dataset.py")
    first.radio(key="dataset_kind").set_value("Folder or CSV on the server").run()
    first.selectbox(key="server_folder").set_value(shapes_folder.name).run()
    first.button(key="use_folder").click().run()
    assert any(m.value == f"**{plain(shapes_folder.name)}**" for m in first.sidebar.markdown)
    tab = first.query_params["tab"]
    second = open_page("app_pages/1_Dataset.py")  # another tab: chooses the demo
    assert second.query_params["tab"] != tab
    second.radio(key="dataset_kind").set_value("Built-in demo").run()
    second.button(key="use_demo").click().run()
    assert any(m.value == r"**demo \(shapes\)**" for m in second.sidebar.markdown)
    refreshed = AppTest.from_file(APP, default_timeout=120)  # the first tab refreshed: a new session, the same URL
    refreshed.query_params["tab"] = tab
    refreshed.run()
    assert any(m.value == f"**{plain(shapes_folder.name)}**" for m in refreshed.sidebar.markdown)
    assert any(m.value == r"**demo \(shapes\)**" for m in open_page().sidebar.markdown)  # a new tab: the last choice

