"""Every page through Streamlit's AppTest: widgets exist, the demo flow works, jobs start, refuse and stop."""

import re
import time
from pathlib import Path

import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")


@pytest.fixture
def ui(tmp_path, monkeypatch, studio_home):
    """Fresh runs folder and preferences for each test; the demo images are shared."""
    home = tmp_path / "home"
    home.mkdir()
    from tl_core.data.demo import demo_root

    (home / "demo-v1").symlink_to(demo_root())
    monkeypatch.setenv("TL_STUDIO_HOME", str(home))
    monkeypatch.setenv("TL_STUDIO_RUNS", str(tmp_path / "runs"))
    st.cache_data.clear()
    st.cache_resource.clear()
    yield tmp_path
    from pages.ui.shared import job_manager

    jobs = job_manager()
    if jobs.active():
        jobs.stop()
        jobs.wait(jobs.active(), 60)


def open_page(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def wait_for(at: AppTest, done, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        at.run()
        if done(at):
            return
        time.sleep(0.5)
    pytest.fail("timed out waiting for the page")


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


def chart(at: AppTest, text: str) -> dict:
    """The plotly figure (as the browser gets it) whose spec contains `text`, e.g. its title."""
    import json

    return json.loads(next(c.proto.spec for c in at.get("plotly_chart") if text in c.proto.spec))


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


def test_dataset_page_summarises_and_checks_the_demo(ui):
    at = open_page("pages/1_Dataset.py")
    at.button(key="use_demo").click().run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Classes"] == "5" and metrics["train images"] == "300" and metrics["val images"] == "80"
    assert metrics["Problems"] == "0" and at.success
    assert at.radio(key="dataset_kind").options[:4] == ["Built-in demo", "Folder on the server", "Upload a .zip", "torchvision dataset"]
    assert len(at.get("plotly_chart")) == 1 and len(at.image) == 12  # one page of samples
    assert any(c.value == "Image sizes: all 380 images are 96 x 96 pixels." for c in at.caption)  # no one-dot chart
    at.radio(key="dataset_kind").set_value("torchvision dataset").run()
    at.button(key="use_tv").click().run()
    assert "needs internet access" in at.error[0].value


def test_dataset_page_refuses_folders_outside_the_data_root(ui, monkeypatch, shapes_folder):
    monkeypatch.setenv("TL_STUDIO_DATA_ROOT", str(shapes_folder.parent))
    at = open_page("pages/1_Dataset.py")
    at.radio(key="dataset_kind").set_value("Folder on the server").run()
    at.selectbox(key="server_folder").set_value("shapes").run()
    at.button(key="use_folder").click().run()
    assert {m.label: m.value for m in at.metric}["Classes"] == "3"
    assert any("reason" in df.value and df.value.reason.str.contains("not an image").any() for df in at.dataframe)


def test_backbones_page_table_filters_and_choice(ui):
    at = open_page("pages/2_Backbones.py")
    table = at.dataframe[0].value
    assert len(table) > 20 and {"acc1", "ms_per_image", "cached"} <= set(table.columns)
    assert "Recommended" in at.success[0].value
    at.multiselect(key="bb_family").set_value(["resnet"]).run()
    assert set(at.dataframe[0].value.family) == {"resnet"}
    at.multiselect(key="bb_family").set_value(["mobilenetv2"]).run()
    assert at.button(key="bb_measure").label == "Measure on this device (1 backbone)"
    at.multiselect(key="bb_family").set_value([]).run()
    at.checkbox(key="bb_cached").check().run()  # no weight file on this machine: a sentence, not an empty table
    assert not at.dataframe and any("Offline weights only" in i.value for i in at.info)
    at.checkbox(key="bb_cached").uncheck().run()
    at.selectbox(key="bb_pick").set_value("mobilenet_v3_small").run()
    at.button(key="bb_use").click().run()
    assert any("mobilenet_v3_small selected" in s.value for s in at.success)
    assert any(m.value == "**mobilenet_v3_small**" for m in at.sidebar.markdown)


def _tiny_settings(at: AppTest, epochs: int) -> None:
    at.checkbox(key="cfg_pretrained").uncheck()
    at.radio(key="cfg_strategy").set_value("full").run()
    at.number_input(key="cfg_epochs").set_value(epochs)
    at.number_input(key="cfg_batch_size").set_value(16)
    at.number_input(key="cfg_image_size").set_value(48)
    at.number_input(key="cfg_patience").set_value(0)
    at.run()


def use_backbone(name: str) -> None:
    from tl_core.dashboard import prefs

    prefs.save(prefs.Choices(backbone=name))


def test_demo_flow_train_predict_evaluate(ui):
    use_backbone("mobilenet_v3_small")
    at = open_page("pages/3_Train.py")
    assert at.radio(key="cfg_strategy").options[0].startswith("Feature extraction")
    at.button(key="train_measure").click().run()
    assert any(c.value.startswith("Estimated time: about") for c in at.caption)
    _tiny_settings(at, 2)
    at.button(key="train_start").click().run()
    wait_for(at, lambda a: any("finished" in s.value for s in a.subheader), 400)  # slow on a busy shared machine
    best = next(m for m in at.metric if m.label == "Best val accuracy")
    assert re.fullmatch(r"\d+\.\d%", best.value)  # one format for accuracy everywhere: 95.4%
    curves = chart(at, "Accuracy")
    steps = [t for t in curves["data"] if t["name"] == "train loss (smoothed)"][0]
    assert len(steps["y"]) == 2 * 19  # every step of both epochs (300 images / 16): it moves within the first epoch
    assert steps["x"][0] == pytest.approx(1 / 19) and steps["x"][-1] == pytest.approx(2.0)
    layout = curves["layout"]
    assert layout["xaxis"]["range"] == [0, 2.2] and layout["xaxis"]["dtick"] == 1  # whole epochs, fixed
    assert layout["yaxis2"]["range"] == [0, 1.02] and layout["yaxis2"]["tickformat"] == ".0%"
    assert layout["yaxis"]["range"][0] == 0
    assert len(at.dataframe[0].value) == 1  # run history
    history = chart(at, "Validation accuracy")
    assert history["layout"]["yaxis"]["range"] == [0, 1.02] and history["layout"]["xaxis"]["range"] == [0, 2.2]

    at = open_page("pages/4_Predict.py")
    star = sorted((Path(st_home()) / "demo-v1" / "val" / "star").iterdir())[0]
    at.file_uploader(key="predict_upload").set_value([(star.name, star.read_bytes(), "image/png"),
                                                      ("junk.png", b"not an image", "image/png")]).run()
    assert not at.exception
    assert any(m.value.startswith("**") and "%" in m.value for m in at.markdown)  # top class and probability
    next(s for s in at.slider if s.label == "Top-k").set_value(3).run()
    bars = chart(at, '"orientation":"h"')["data"][0]
    assert len(bars["text"]) == 3 and all(re.fullmatch(r"\d+\.\d%", t) for t in bars["text"])  # every bar labelled
    assert any("not an image" in e.value for e in at.error)
    assert at.get("download_button")
    at.button(key="eval_btn").click().run()
    assert not at.exception, at.exception
    accuracy = next(m for m in at.metric if m.label == "Validation accuracy")
    assert "mistakes of 80" in accuracy.proto.delta and accuracy.proto.direction == accuracy.proto.NONE  # no "up" arrow
    matrix = chart(at, "Confusion matrix")
    heat = matrix["data"][0]
    assert heat["type"] == "heatmap" and heat["x"] == heat["y"] == ["circle", "cross", "square", "star", "triangle"]
    counts = heat["customdata"]
    assert sum(map(sum, counts)) == 80 and all(sum(r) == pytest.approx(1) for r in heat["z"])  # shares of each true row
    notes = matrix["layout"]["annotations"]
    assert len(notes) == 25 and notes[0]["text"] == f"<b>{counts[0][0]}</b><br>{heat['z'][0][0]:.0%}"
    assert {n["font"]["color"] for n in notes if float(n["text"].split("<br>")[1][:-1]) > 50} <= {"#ffffff"}  # white on dark
    assert {n["font"]["color"] for n in notes if float(n["text"].split("<br>")[1][:-1]) < 40} <= {"#1a1a1a"}
    layout = matrix["layout"]
    assert layout["yaxis"]["scaleanchor"] == "x" and layout["width"] - 160 == layout["height"] - 140 == 5 * 64  # square
    clicks = matrix["data"][1]
    assert clicks["unselected"]["marker"]["opacity"] == clicks["selected"]["marker"]["opacity"]  # a click fades nothing
    assert at.selectbox(key="eval_cell_None").options
    at.button(key="export_btn").click().run()
    assert any(b.proto.label.startswith("Download model") for b in at.get("download_button"))


def st_home() -> str:
    import os

    return os.environ["TL_STUDIO_HOME"]


def test_start_busy_restart_then_stop(ui):
    use_backbone("mobilenet_v3_small")
    tab_a, tab_b = open_page("pages/3_Train.py"), open_page("pages/3_Train.py")
    _tiny_settings(tab_a, 200)
    _tiny_settings(tab_b, 200)
    tab_a.button(key="train_start").click().run()
    assert any("is running" in i.value for i in tab_a.info)
    tab_b.button(key="train_start").click().run()  # the second tab still shows its form
    assert any("Busy" in w.value for w in tab_b.warning)
    st.cache_resource.clear()  # the server restarts (a new JobManager); the training child goes on
    tab_c = open_page("pages/3_Train.py")
    wait_for(tab_c, lambda a: any("Job 1: running" in s.value for s in a.subheader) and a.button(key="train_stop"))
    tab_c.button(key="train_stop").click().run()
    wait_for(tab_c, lambda a: any("Job 1: stopped" in s.value for s in a.subheader), 60)
    assert tab_c.button(key="job_resume")  # a stopped run can go on from the job panel


def test_uploaded_zip_becomes_the_dataset(ui, tmp_path, shapes_folder):
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in shapes_folder.rglob("*.png"):
            zf.write(p, f"upl/{p.relative_to(shapes_folder)}")
    at = open_page("pages/1_Dataset.py")
    at.radio(key="dataset_kind").set_value("Upload a .zip").run()
    at.file_uploader(key="zip_upload").set_value(("upl.zip", buf.getvalue(), "application/zip")).run()
    at.button(key="use_zip").click().run()
    assert not at.exception and {m.label: m.value for m in at.metric}["Classes"] == "3"
    Image.open(next(shapes_folder.rglob("*.png")))  # the source is untouched


def test_missing_weights_fail_with_file_folder_and_suggestion(ui):
    use_backbone("resnet18")
    at = open_page("pages/3_Train.py")
    assert any("resnet18-f37072fd.pth" in w.value and "checkpoints" in w.value for w in at.warning)
    at.button(key="train_start").click().run()
    wait_for(at, lambda a: any(": failed" in s.value for s in a.subheader), 60)
    assert any("resnet18-f37072fd.pth" in e.value for e in at.error)
    assert any(i.value.startswith("Suggestion:") and "from scratch" in i.value for i in at.info)
    assert not at.get("plotly_chart")  # no empty chart with made-up axes after a failure (nor for its epoch-less run)


def test_backbones_page_measures_on_this_device(ui):
    at = open_page("pages/2_Backbones.py")
    at.multiselect(key="bb_family").set_value(["mobilenetv3"]).run()
    assert at.dataframe[0].value.ms_per_image.isna().all()
    at.button(key="bb_measure").click().run()
    table = at.dataframe[0].value
    assert set(table.name) == {"mobilenet_v3_small", "mobilenet_v3_large"} and (table.ms_per_image > 0).all()
    assert at.get("plotly_chart")  # accuracy against measured latency


def test_build_a_dataset_in_the_browser(ui, tmp_path, monkeypatch):
    import io

    monkeypatch.setenv("TL_STUDIO_DATA_ROOT", str(tmp_path / "data"))
    at = open_page("pages/1_Dataset.py")
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
        assert any("junk.png" in e.value and "Not added" in e.value for e in at.error)
        assert not uploader().value and at.button(key="build_add_images").disabled  # nothing carries over to the next class
    at.selectbox(key="build_target").set_value("dogs").run()
    uploader().set_value([("cats0-again.png", png((200, 0, 0)), "image/png")]).run()  # a cat picture offered as a dog
    at.button(key="build_add_images").click().run()
    assert any("cats0-again.png" in e.value and "already in 'cats'" in e.value for e in at.error)
    counts = next(df.value for df in at.dataframe if list(df.value.columns) == ["class", "images"])
    assert dict(zip(counts["class"], counts["images"])) == {"cats": 2, "dogs": 2}
    at.button(key="build_use").click().run()
    assert {m.label: m.value for m in at.metric}["Classes"] == "2"
    assert sorted(p.name for p in (tmp_path / "data" / "pets").iterdir()) == ["cats", "dogs"]


def test_train_page_never_offers_a_combination_that_cannot_learn(ui):
    at = open_page("pages/3_Train.py")
    at.checkbox(key="cfg_pretrained").uncheck().run()
    assert any("cannot learn" in e.value for e in at.error) and at.button(key="train_start").disabled
    at.radio(key="cfg_strategy").set_value("full").run()
    assert not any("cannot learn" in e.value for e in at.error) and not at.button(key="train_start").disabled


def test_backbones_scatter_keeps_every_backbone_after_one_is_measured(ui):
    import json

    from tl_core.measure import speed

    speed.measure("mobilenet_v3_small", batch=2, size=64, train_batch=2)  # one measured, its sibling not
    at = open_page("pages/2_Backbones.py")
    at.multiselect(key="bb_family").set_value(["mobilenetv3"]).run()
    shown = len(at.dataframe[0].value)
    spec = json.loads(next(c for c in at.get("plotly_chart") if "GFLOPs" in c.proto.spec).proto.spec)
    points = sum(len(trace["hovertext"]) for trace in spec["data"])  # one name per point (x is binary-encoded)
    assert points == shown  # measured and unmeasured alike
    assert {t["name"].split(", ")[-1] for t in spec["data"]} == {"measured here", "not measured yet"}


def test_run_history_resumes_and_deletes_runs_from_the_page(ui):
    import threading

    from tl_core.config import TrainConfig
    from tl_core.train.runs import list_runs
    from tl_core.train.trainer import train

    runs_dir = ui / "runs"
    stop = threading.Event()
    stop.set()  # a run stopped before its first epoch finished
    tiny = TrainConfig(backbone="mobilenet_v3_small", pretrained=False, strategy="full", image_size=48, epochs=1, patience=0)
    first = train("demo", tiny, runs_dir, stop=stop)
    (runs_dir / "broken-run").mkdir()
    (runs_dir / "broken-run" / "run.json").write_text("{not json")  # shown as broken, never a traceback
    at = open_page("pages/3_Train.py")
    table = at.dataframe[0].value
    assert dict(zip(table.run, table.status))["broken-run"] == "broken"
    manage_run(at).set_value(Path(first.run_dir).name).run()
    assert not at.exception, at.exception
    at.button(key="run_resume").click().run()
    wait_for(at, lambda a: any(": finished" in s.value for s in a.subheader), 120)
    assert next(r for r in list_runs(runs_dir) if r.id == Path(first.run_dir).name).summary["status"] == "finished"
    manage_run(at).set_value(Path(first.run_dir).name).run()
    assert at.button(key="run_delete").disabled  # nothing is deleted without the confirmation
    at.checkbox(key=f"run_delete_confirm_{Path(first.run_dir).name}").check().run()
    at.button(key="run_delete").click().run()
    assert not Path(first.run_dir).exists() and any("Deleted" in s.value for s in at.success)


def manage_run(at: AppTest):
    return next(s for s in at.selectbox if s.label == "Run")


def tiny_runs(runs_dir: Path, n: int, source: str = "demo") -> list[str]:
    """`n` one-epoch runs of a tiny untrained network, oldest first (run ids are timestamps: a second apart)."""
    from tl_core.config import TrainConfig
    from tl_core.train.trainer import train

    tiny = TrainConfig(backbone="mobilenet_v3_small", pretrained=False, strategy="full", image_size=32, epochs=1, patience=0)
    ids = []
    for i in range(n):
        if i:
            time.sleep(1.1)
        ids.append(Path(train(source, tiny, runs_dir).run_dir).name)
    return ids


def test_manage_defaults_to_the_latest_run_and_a_confirmation_arms_one_run_only(ui):
    old, new = tiny_runs(ui / "runs", 2)
    at = open_page("pages/3_Train.py")
    assert manage_run(at).value == new
    at.checkbox(key=f"run_delete_confirm_{new}").check().run()
    at.button(key="run_delete").click().run()
    assert not (ui / "runs" / new).exists() and (ui / "runs" / old).exists()
    assert manage_run(at).value == old
    assert not at.checkbox(key=f"run_delete_confirm_{old}").value and at.button(key="run_delete").disabled
    newest = tiny_runs(ui / "runs", 1)[0]
    at.run()
    assert manage_run(at).value == newest  # a run made since the page was opened becomes the default


def test_home_and_predict_name_the_runs_dataset(ui, shapes_folder, monkeypatch):
    """Step 3 speaks of the chosen dataset's runs only; the Predict picker tells runs apart by data, backbone, date."""
    monkeypatch.setenv("TL_STUDIO_DATA_ROOT", str(shapes_folder.parent))
    tiny_runs(ui / "runs", 1, str(shapes_folder))
    at = open_page()
    step3 = next(m.value for m in at.markdown if m.value.startswith("#### ") and "3. Train" in m.value)
    assert "check_circle" not in step3 and any("No trained model yet" in m.value for m in at.markdown)  # demo: no run yet
    demo_run = tiny_runs(ui / "runs", 1)[0]
    at.run()
    assert any(f"Last trained on this dataset: **{demo_run}**" in m.value for m in at.markdown)
    at.switch_page("pages/4_Predict.py").run()
    assert not at.exception, at.exception
    picker = next(s for s in at.selectbox if s.label == "Run")
    shown = list(picker.options)  # as the browser shows them (format_func applied)
    assert any(o.startswith(f"{shapes_folder.name} · mobilenet_v3_small · ") for o in shown), shown
    assert any(o.startswith("demo") and demo_run in o for o in shown), shown


def test_every_setting_has_a_one_line_help(ui):
    at = open_page("pages/3_Train.py")
    settings = [w for w in [*at.main, *(w for e in at.expander for w in e)] if str(getattr(w, "key", "")).startswith("cfg_")]
    assert len({w.key for w in settings}) >= 20  # every TrainConfig option shown on the page
    for w in settings:
        assert w.help and "\n" not in w.help, w.key
    assert "default" in at.number_input(key="cfg_epochs").help  # defaults explained where they depend on something
    at = open_page("pages/2_Backbones.py")
    for key in ("bb_family", "bb_size", "bb_acc", "bb_cached", "bb_sort"):
        assert next(w for w in at.main if getattr(w, "key", None) == key).help, key


def test_a_refresh_keeps_this_tabs_dataset_whatever_another_tab_chose(ui, shapes_folder, monkeypatch):
    monkeypatch.setenv("TL_STUDIO_DATA_ROOT", str(shapes_folder.parent))
    first = open_page("pages/1_Dataset.py")
    first.radio(key="dataset_kind").set_value("Folder on the server").run()
    first.selectbox(key="server_folder").set_value(shapes_folder.name).run()
    first.button(key="use_folder").click().run()
    assert any(m.value == f"**{shapes_folder.name}**" for m in first.sidebar.markdown)
    tab = first.query_params["tab"]
    second = open_page("pages/1_Dataset.py")  # another tab: chooses the demo
    assert second.query_params["tab"] != tab
    second.radio(key="dataset_kind").set_value("Built-in demo").run()
    second.button(key="use_demo").click().run()
    assert any(m.value == "**demo (shapes)**" for m in second.sidebar.markdown)
    refreshed = AppTest.from_file(APP, default_timeout=120)  # the first tab refreshed: a new session, the same URL
    refreshed.query_params["tab"] = tab
    refreshed.run()
    assert any(m.value == f"**{shapes_folder.name}**" for m in refreshed.sidebar.markdown)
    assert any(m.value == "**demo (shapes)**" for m in open_page().sidebar.markdown)  # a new tab: the last choice


def test_per_run_settings_follow_the_run(ui):
    """The unsure slider starts at each run's own threshold; the job header names the split the run really used;
    a run stopped in its first epoch says so in the words the sidebar uses."""
    from pages.ui.shared import job_manager
    from tl_core.config import TrainConfig
    from tl_core.use.predict import Predictor

    old, new = tiny_runs(ui / "runs", 2)
    at = open_page("pages/4_Predict.py")
    picker = next(s for s in at.selectbox if s.label == "Run")
    picker.set_value(old).run()
    next(s for s in at.slider if s.label.startswith("Answer")).set_value(0.99).run()
    picker = next(s for s in at.selectbox if s.label == "Run")
    picker.set_value(new).run()
    assert not at.exception, at.exception
    unsure = next(s for s in at.slider if s.label.startswith("Answer"))
    assert unsure.value == round(Predictor.from_run(ui / "runs" / new).threshold, 2) != 0.99

    jobs = job_manager()
    job = jobs.start("demo", TrainConfig(backbone="mobilenet_v3_small", pretrained=False, strategy="full", image_size=32,
                                         epochs=50, patience=0))
    deadline = time.time() + 120
    while not job.snapshot().run_dir and time.time() < deadline:
        time.sleep(0.3)
    jobs.stop(job)
    assert jobs.wait(job, 60) == "stopped"
    at = open_page("pages/3_Train.py")
    header = next(c.value for c in at.caption if c.value.startswith("Dataset demo"))
    assert "its own validation folder" in header and "seed" not in header  # the demo has a val/ folder
    s = job.snapshot()
    finished = len(s.history)
    sidebar = next(m.value for m in at.sidebar.markdown if m.value.startswith(f"job {s.id}"))
    assert f"{finished} of 50 epochs finished" in sidebar
    assert s.result.stop_reason == (f"stopped by request after epoch {finished} of 50" if finished
                                    else "stopped by request during epoch 1, before any epoch finished")


def test_a_dropped_outlier_can_be_undone_and_tables_name_files_not_paths(ui, shapes_folder, with_real_weights):
    import numpy as np

    from tl_core.dashboard import prefs
    from tl_core.data.sources import DatasetSpec

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(shapes_folder / "circle" / "noise.png")
    prefs.save(prefs.Choices(DatasetSpec(str(shapes_folder)), "mobilenet_v2"))
    at = open_page("pages/1_Dataset.py")
    at.number_input(key="health_size").set_value(64).run()
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
