"""The Train page through AppTest: settings from the one declaration, jobs started, refused, stopped and
resumed, the run history, and the demo flow on to Predict."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import streamlit as st
from helpers import ROOT, chart, open_page, st_home, tiny_runs, tiny_settings, use_backbone, wait_for
from streamlit.testing.v1 import AppTest

from tl_core.config import EPOCHS_BY_STRATEGY, TrainConfig, options


def test_demo_flow_train_predict_evaluate(ui):
    use_backbone("mobilenet_v3_small")
    at = open_page("app_pages/3_Train.py")
    assert at.radio(key="cfg_strategy").options[0].startswith("Feature extraction")
    at.button(key="train_measure").click().run()
    assert any(c.value.startswith("Estimated time: about") for c in at.caption)
    tiny_settings(at, 2)
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

    at = open_page("app_pages/4_Predict.py")
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
    card = next(m.value for m in at.markdown if m.value.startswith("# Model card"))  # shown before the download
    assert "Validation accuracy" in card and all(c in card for c in ("circle", "cross", "square", "star", "triangle"))


def test_start_busy_restart_then_stop(ui):
    use_backbone("mobilenet_v3_small")
    tab_a, tab_b = open_page("app_pages/3_Train.py"), open_page("app_pages/3_Train.py")
    tiny_settings(tab_a, 200)
    tiny_settings(tab_b, 200)
    tab_a.button(key="train_start").click().run()
    assert any("is running" in i.value for i in tab_a.info)
    tab_b.button(key="train_start").click().run()  # the second tab still shows its form
    assert any("Busy" in w.value for w in tab_b.warning)
    st.cache_resource.clear()  # the server restarts (a new JobManager); the training child goes on
    tab_c = open_page("app_pages/3_Train.py")
    wait_for(tab_c, lambda a: any("Job 1: running" in s.value for s in a.subheader) and a.button(key="train_stop"))
    tab_c.button(key="train_stop").click().run()
    wait_for(tab_c, lambda a: any("Job 1: stopped" in s.value for s in a.subheader), 60)
    assert tab_c.button(key="job_resume")  # a stopped run can go on from the job panel


def test_train_page_offers_letterbox_and_the_run_uses_it(ui):
    """The fit choice is drawn from its declaration under "More settings"; a run started with letterbox logs and
    stores it."""
    from tl_core.train.runs import list_runs

    use_backbone("mobilenet_v3_small")
    at = open_page("app_pages/3_Train.py")
    fit = at.selectbox(key="cfg_fit")
    assert fit.options == ["crop", "letterbox"] and fit.value == "crop" and "letterbox" in fit.help
    assert any(w.key == "cfg_fit" for e in at.expander for w in e if getattr(w, "key", None))
    fit.set_value("letterbox")
    tiny_settings(at, 1)
    at.button(key="train_start").click().run()
    wait_for(at, lambda a: any("finished" in s.value for s in a.subheader), 300)
    assert any("padded to a square with the mean colour (letterbox)" in c.value for c in at.code)  # the job's log
    (run,) = list_runs(ui / "runs")
    assert run.info["config"]["fit"] == run.info["preprocessing"]["fit"] == "letterbox"


def test_missing_weights_fail_with_file_folder_and_suggestion(ui):
    use_backbone("resnet18")
    at = open_page("app_pages/3_Train.py")
    assert any("resnet18-f37072fd.pth" in w.value and "checkpoints" in w.value for w in at.warning)
    at.button(key="train_start").click().run()
    wait_for(at, lambda a: any(": failed" in s.value for s in a.subheader), 60)
    assert any("resnet18-f37072fd.pth" in e.value for e in at.error)
    assert any(i.value.startswith("Suggestion:") and "from scratch" in i.value for i in at.info)
    assert not at.get("plotly_chart")  # no empty chart with made-up axes after a failure (nor for its epoch-less run)


def test_train_page_never_offers_a_combination_that_cannot_learn(ui):
    at = open_page("app_pages/3_Train.py")
    at.checkbox(key="cfg_pretrained").uncheck().run()
    assert any("cannot learn" in e.value for e in at.error) and at.button(key="train_start").disabled
    at.radio(key="cfg_strategy").set_value("full").run()
    assert not any("cannot learn" in e.value for e in at.error) and not at.button(key="train_start").disabled


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
    at = open_page("app_pages/3_Train.py")
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


def test_every_setting_has_a_one_line_help(ui):
    at = open_page("app_pages/3_Train.py")
    settings = [w for w in [*at.main, *(w for e in at.expander for w in e)] if str(getattr(w, "key", "")).startswith("cfg_")]
    assert len({w.key for w in settings}) >= 20  # every TrainConfig option shown on the page
    for w in settings:
        assert w.help and "\n" not in w.help, w.key
    assert "default" in at.number_input(key="cfg_epochs").help  # defaults explained where they depend on something
    at = open_page("app_pages/2_Backbones.py")
    for key in ("bb_family", "bb_size", "bb_acc", "bb_cached", "bb_sort"):
        assert next(w for w in at.main if getattr(w, "key", None) == key).help, key


def test_strategy_defaults_follow_the_strategy_and_every_option_has_a_widget_and_a_flag(tmp_path, monkeypatch):
    """Epochs follow the strategy, and the page and the CLI both derive every option from TrainConfig's one declaration."""
    monkeypatch.setenv("TL_STUDIO_RUNS", str(tmp_path / "runs"))
    at = open_page("app_pages/3_Train.py")
    assert at.number_input(key="cfg_epochs").value == EPOCHS_BY_STRATEGY["features"]
    at.radio(key="cfg_strategy").set_value("full").run()
    assert at.number_input(key="cfg_epochs").value == EPOCHS_BY_STRATEGY["full"] == 5
    at.radio(key="cfg_strategy").set_value("features").run()
    assert at.number_input(key="cfg_epochs").value == 10
    assert at.number_input(key="cfg_lr").value is None  # the optimiser's own default unless the user sets one
    widget_keys = {w.key for w in at.main if getattr(w, "key", None)} | {
        w.key for e in at.expander for w in e if getattr(w, "key", None)}
    page_options = {name for name, _, opt, _ in options() if opt.page}
    assert {f"cfg_{n}" for n in page_options} <= widget_keys
    helptext = subprocess.run([sys.executable, "-m", "tl_core", "train", "--help"], capture_output=True, text=True,
                              cwd=ROOT, env=os.environ.copy()).stdout
    for name, *_ in options():
        assert "--" + name.replace("_", "-") in helptext, name
    assert TrainConfig(strategy="full").epochs == 5 and TrainConfig(strategy="full", epochs=7).epochs == 7


def manage_run(at: AppTest):
    return next(s for s in at.selectbox if s.label == "Run")






def test_manage_defaults_to_the_latest_run_and_a_confirmation_arms_one_run_only(ui):
    old, new = tiny_runs(ui / "runs", 2)
    at = open_page("app_pages/3_Train.py")
    assert manage_run(at).value == new
    at.checkbox(key=f"run_delete_confirm_{new}").check().run()
    at.button(key="run_delete").click().run()
    assert not (ui / "runs" / new).exists() and (ui / "runs" / old).exists()
    assert manage_run(at).value == old
    assert not at.checkbox(key=f"run_delete_confirm_{old}").value and at.button(key="run_delete").disabled
    newest = tiny_runs(ui / "runs", 1)[0]
    at.run()
    assert manage_run(at).value == newest  # a run made since the page was opened becomes the default



def test_per_run_settings_follow_the_run(ui):
    """The unsure slider starts at each run's own threshold; the job header names the split the run really used;
    a run stopped in its first epoch says so in the words the sidebar uses."""
    from app_pages.ui.shared import job_manager
    from tl_core.config import TrainConfig
    from tl_core.use.predict import Predictor

    old, new = tiny_runs(ui / "runs", 2)
    at = open_page("app_pages/4_Predict.py")
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
    at = open_page("app_pages/3_Train.py")
    header = next(c.value for c in at.caption if c.value.startswith("Dataset demo"))
    assert "its own validation split" in header and "seed" not in header  # the demo has a val/ folder
    s = job.snapshot()
    finished = len(s.history)
    sidebar = next(m.value for m in at.sidebar.markdown if m.value.startswith(f"job {s.id}"))
    assert f"{finished} of 50 epochs finished" in sidebar
    assert s.result.stop_reason == (f"stopped by request after epoch {finished} of 50" if finished
                                    else "stopped by request during epoch 1, before any epoch finished")

