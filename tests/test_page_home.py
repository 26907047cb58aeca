"""The home page (streamlit_app.py) through AppTest: the three steps, the sidebar and Quick start."""

from __future__ import annotations

from helpers import open_page, use_backbone


def test_home_shows_the_three_steps_and_the_sidebar(ui):
    at = open_page()
    assert at.title[0].value == "TL Studio"
    assert any("CPU" in m.value for m in at.markdown)
    steps = [m.value for m in at.markdown if m.value.startswith("#### ")]
    assert steps == ["#### :material/check_circle: 1. Data", "#### :material/radio_button_unchecked: 2. Backbone",
                     "#### :material/radio_button_unchecked: 3. Train and use"]  # the demo is usable; nothing chosen or trained
    assert any("5 classes, 300 training and 80 validation images" in m.value for m in at.markdown)
    assert any(m.value == "**demo (shapes)**" for m in at.sidebar.markdown)
    assert not any("/" in m.value for m in at.sidebar.markdown if m.value.startswith("**"))  # names, never paths


def test_quick_start_trains_the_chosen_backbone_on_the_chosen_data(ui):
    use_backbone("mobilenet_v3_small")
    at = open_page()
    assert at.button(key="quick_start").label == "Quick start: train mobilenet_v3_small on demo (shapes)"
    at.button(key="quick_start").click().run()
    assert not at.exception, at.exception
    from pages.ui.shared import job_manager

    job = job_manager().current()
    assert job and (job.dataset.source, job.config.strategy, job.config.pretrained, job.config.backbone) == (
        "demo", "features", True, "mobilenet_v3_small")  # the good defaults: a fitted head on pretrained features
    assert at.title[0].value == "Train" and any(s.value.startswith("Job 1") for s in at.subheader)  # sent to watch it
    assert any("demo (shapes)" in c.value for c in at.caption)  # the job panel names its dataset
