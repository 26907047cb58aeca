"""Predict: classify images (with Grad-CAM and an "unsure" answer), a whole folder or zip, evaluate and export."""

import io
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app_pages.ui.charts import confusion_figure, topk_bars
from app_pages.ui.live_camera import live_view
from app_pages.ui.shared import choices, choose, plain
from tl_core import paths
from tl_core.data.images import BadImage
from tl_core.data.sources import DatasetError, resolve_in_root
from tl_core.formats import TABLE_PERCENT, count, percent, points
from tl_core.train.runs import Run, latest_finished, list_runs
from tl_core.use.explain import explain
from tl_core.use.export import FORMATS, ExportError, describe_check, export, load_card, load_meta
from tl_core.use.predict import (
    NONE_OF_THESE,
    UNSURE,
    Predictor,
    evaluate,
    folder_inputs,
    predict_batch,
    prediction_rows,
    unpack_upload,
)

runs = [r for r in list_runs(paths.runs_dir()) if r.has_checkpoint() and not r.broken]
if not runs:
    st.info("No trained run yet: train one on the **Train** page first.")
    st.stop()



def run_label(r: Run) -> str:
    """Which data, which backbone, when, how good: runs of different datasets are never mistaken for each other."""
    dataset = r.info.get("dataset") or {}
    return (f"{dataset.get('name') or '?'} · {r.info['config'].get('backbone')} · {r.started} · "
            f"{r.accuracy().label()} ({r.id})")


default = choices().run
ids = [r.id for r in runs]
latest = latest_finished(paths.runs_dir(), choices().dataset.source) or latest_finished(paths.runs_dir())
index = ids.index(default) if default in ids else ids.index(latest.id) if latest and latest.id in ids else 0
labels = {r.id: run_label(r) for r in runs}
run_id = st.selectbox("Run", ids, index=index, key="predict_run", format_func=labels.get)
if run_id != default:
    choose(run=run_id)
run = next(r for r in runs if r.id == run_id)
stamp = (run.dir / "best.safetensors").stat().st_mtime


@st.cache_resource(max_entries=3, show_spinner="Loading the model; the first time, measuring its training and validation pictures...")
def predictor(run_dir: str, stamp: float) -> Predictor:
    return Predictor.from_run(run_dir)


@st.cache_data(max_entries=5, show_spinner=False)
def evaluation(run_dir: str, stamp: float):
    bar = st.progress(0.0, text="Evaluating...")
    ev = evaluate(run_dir, progress=lambda d, n: bar.progress(d / n, text=f"Evaluating {d}/{n}"))
    bar.empty()
    return ev


@st.cache_data(max_entries=256, show_spinner=False)
def heat_overlay(run_dir: str, stamp: float, image: bytes | str, class_name: str | None = None):
    """Grad-CAM over the image (for `class_name`, default the predicted class), as an RGB array."""
    source = image if isinstance(image, str) else io.BytesIO(image)
    e = explain(predictor(run_dir, stamp), source, class_name)
    return np.asarray(e.overlay()), e.class_name


model = predictor(str(run.dir), stamp)
cal = model.calibration


def answer_line(p) -> str:
    best, prob = p.top[0]
    if p.labels is not None and not p.unfamiliar:  # a label set: every label over its own threshold
        named = ", ".join(f"{plain(c)} ({percent(v)})" for c, v in p.labels)
        return f"**{plain(p.answer(threshold))}**" + (f": {named}" if p.labels else f" (highest: {plain(best)} {percent(prob)})")
    if p.unfamiliar:
        return (f"**Unsure — {NONE_OF_THESE}** (unlike every training picture: distance {p.distance:.2f}, validation "
                f"pictures lie within {p.familiar_within:.2f}; the classes alone would say {best} {percent(prob)})")
    if p.answer(threshold) == UNSURE:
        return f"**Unsure / none of these** (best guess {plain(best)}, {percent(prob)}: below {percent(threshold)})"
    return f"**{plain(best)}** ({percent(prob)})"


def results_table(preds, key: str) -> None:
    table = pd.DataFrame(prediction_rows(preds, threshold))  # files named as the user knows them, never server paths
    shown = table.copy()  # probabilities as percentages on screen; the CSV keeps 0-1 values for scripts
    probs = [c for c in shown.columns if c == "confidence" or c.endswith("_probability")]
    for c in probs:
        shown[c] = shown[c].map(points)
    st.dataframe(shown, hide_index=True, key=f"{key}_table",
                 column_config={c: st.column_config.NumberColumn(format=TABLE_PERCENT) for c in probs})
    st.download_button("Download results (CSV)", table.to_csv(index=False), "predictions.csv", "text/csv", key=f"{key}_csv")


def label_set_evaluation(ev) -> None:
    """A multi-label run's validation figures: exact-set accuracy, F1 and mAP, per label, and the wrong sets."""
    m = st.columns(4)
    m[0].metric("Exact-set accuracy", percent(ev.accuracy), f"{len(ev.mistakes)} wrong sets of {len(ev.predictions)}",
                delta_color="off", delta_arrow="off", help=f"{ev.accuracy_label}: every label of the picture right.")
    m[1].metric("Micro F1", percent(ev.micro_f1), help="F1 over every (picture, label) decision together")
    m[2].metric("Macro F1", percent(ev.macro_f1), help="The mean of the labels' F1: every label weighs the same")
    m[3].metric("mAP", percent(ev.mean_average_precision), help="Mean average precision over labels (no threshold)")
    st.caption(ev.calibration)
    st.subheader("Per label")
    table = pd.DataFrame(ev.per_class)
    scored = ("precision", "recall", "f1", "average_precision", "threshold")
    for col in scored:
        table[col] = table[col].map(points)
    st.dataframe(table, hide_index=True, key="per_label",
                 column_config={c: st.column_config.NumberColumn(format=TABLE_PERCENT) for c in scored})
    st.subheader("Pictures whose label set is wrong")
    if not ev.mistakes:
        st.success("Every validation picture has exactly its labels.")
    cols = st.columns(6)
    for i, m in enumerate(ev.mistakes[:18]):
        cols[i % 6].image(m["file"], caption=f"{m['true']} -> {m['predicted']}", width="stretch")


def skipped_table(skipped) -> None:
    """The files a batch left out, by their names inside the folder or zip, each with why."""
    if skipped:
        st.dataframe(pd.DataFrame([asdict(x) for x in skipped], columns=["file", "reason"]), hide_index=True,
                     key="batch_skipped")


a, b, c = st.columns([2, 2, 1])
k = a.slider("Top-k", 1, max(1, len(run.classes)), min(3, len(run.classes)), key=f"top_k_{run.id}")
if model.targets.multi_label:  # each label has its own threshold, chosen on validation: no one slider
    threshold = model.threshold
    b.caption("Multi-label: a picture gets every label whose probability reaches that label's threshold ("
              + ", ".join(f"{plain(c)} {percent(t)}" for c, t in zip(model.classes, model.thresholds)) + ").")
else:
    threshold = b.slider("Answer \"unsure\" below this confidence", 0.0, 1.0, round(model.threshold, 2), 0.01,
                         key=f"unsure_below_{run.id}",  # each run starts from its own threshold
                         format="percent", help="Default from the validation split: 95% of right answers there are more confident.")
show_cam = c.toggle("Grad-CAM", True, key="show_cam", help="Colour where the evidence for the answer is (red: strong).")
if cal:
    st.caption(cal.sentence())

tab_predict, tab_batch, tab_eval = st.tabs(["Classify images", "Folder or zip", "Evaluate the run"])
with tab_predict:
    files = st.file_uploader("Images", type=["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"],
                             accept_multiple_files=True, key="predict_upload")
    images = list(files or [])
    if st.toggle("Use the camera", key="camera_on"):
        shot = st.camera_input("Take a picture", key="camera")
        if shot is not None:
            images.append(shot)
    if st.toggle("Live camera", key="live_on", help="Classify the webcam continuously, top-k and frame rate over the video."):
        live_view(model, k, threshold)
    if images:
        preds = model.predict(images, top_k=k)
        for img, p in list(zip(images, preds))[:24]:
            left, mid, right = st.columns([1, 1, 2]) if show_cam else (*st.columns([1, 2]), None)
            if p.error:
                left.error(f"{plain(p.file)}: {plain(p.error)}")
                continue
            left.image(img.getvalue(), caption=p.file, width="stretch")
            chart_col = right if show_cam else mid
            if show_cam:
                label = None
                if p.labels is not None:  # a label set: a map per label, the strongest first
                    options = [c for c, _ in p.labels] + [c for c, _ in p.top if c not in dict(p.labels)]
                    label = mid.selectbox("Grad-CAM for", options, key=f"cam_label_{p.file}_{id(img)}")
                overlay, cls = heat_overlay(str(run.dir), stamp, img.getvalue(), label)
                mid.image(overlay, caption=f"Grad-CAM: evidence for {cls}", width="stretch")
            chart_col.markdown(answer_line(p))
            chart_col.plotly_chart(topk_bars(p.top), key=f"bars_{p.file}_{id(img)}")
        results_table(preds, "pred")

with tab_batch:
    st.write("Classify every image of a zip or of a folder on the server: one row per file, as a table and a CSV.")
    source = st.radio("Images from", ["Upload a .zip", "Folder on the server"], horizontal=True, key="batch_kind")
    target = upload = None
    if source == "Upload a .zip":
        upload = st.file_uploader("Zip of images", type=["zip"], key="batch_zip")
    else:
        rel = st.text_input(f"Folder inside {paths.data_root()}", key="batch_folder")
        if rel:
            try:
                target = resolve_in_root(rel, paths.data_root())
            except DatasetError as e:
                st.error(plain(e))
    if (target or upload) is not None and st.button("Classify all", type="primary", key="batch_run"):
        try:  # an upload is unpacked once per content under a generated name; its name is never a path
            found = (folder_inputs(target, rel) if target else
                     folder_inputs(unpack_upload(upload.getbuffer()), Path(upload.name).name))
        except DatasetError as e:
            st.error(plain(e))
            found = None
        if found is not None and not found.images:
            st.warning("No image files found there." + (" Skipped:" if found.skipped else ""))
            skipped_table(found.skipped)
        elif found:
            bar = st.progress(0.0, text=f"Classifying {len(found.images)} images...")
            batch = predict_batch(model, found, k, progress=lambda d, n: bar.progress(d / n, text=f"Classified {d}/{n}"))
            bar.empty()
            st.session_state.batch = (run.id, batch)
    done = st.session_state.get("batch")
    if done and done[0] == run.id:
        batch = done[1]
        answers = pd.Series([p.answer(threshold) for p in batch.classified])
        st.caption(f"{count(len(batch.classified), 'file')} classified: "
                   + ", ".join(f"{n} {plain(a)}" for a, n in answers.value_counts().items())
                   + (f"; {count(len(batch.skipped), 'file')} skipped (listed below, with why)" if batch.skipped else ""))
        results_table(batch.predictions, "batch")
        if batch.skipped:
            st.markdown(f"**Skipped, not classified ({count(len(batch.skipped), 'file')})**")
            skipped_table(batch.skipped)

with tab_eval:
    if st.button("Evaluate on the validation split", key="eval_btn") or st.session_state.get("evaluated") == run.id:
        st.session_state.evaluated = run.id
        ev = evaluation(str(run.dir), stamp)
        if ev.multi_label:
            label_set_evaluation(ev)
        else:
            m1, m_balanced, m2 = st.columns(3)
            m1.metric("Validation accuracy", percent(ev.accuracy), f"{len(ev.mistakes)} mistakes of {len(ev.predictions)} images",
                      delta_color="off", delta_arrow="off", help=f"{ev.accuracy_label}: the figure the run picker shows.")
            worst = min(ev.per_class, key=lambda c: (c["support"] == 0, c["recall"]))
            m_balanced.metric("Balanced accuracy", percent(ev.balanced_accuracy), f"lowest recall: {plain(worst['class'])} "
                              f"{percent(worst['recall'])}", delta_color="off", delta_arrow="off",
                              help="The mean of the per-class recall (table below): accuracy as if every class were equally "
                                   "common, so a small class that is never recognised shows here even when accuracy is high.")
            m2.metric("Calibration error (ECE)", percent(ev.ece_calibrated), f"{percent(ev.ece)} raw", delta_color="off",
                      delta_arrow="off", help=f"Average gap between confidence and accuracy. {ev.calibration}")
            clicked = st.plotly_chart(confusion_figure(ev.classes, ev.confusion_matrix), key="confusion", on_select="rerun",
                                      selection_mode="points", width="content", config={"displayModeBar": False})
            cells = [(t, p) for i, t in enumerate(ev.classes) for j, p in enumerate(ev.classes) if ev.confusion_matrix[i][j]]
            clicks = clicked.selection.points if clicked and clicked.selection else []
            picked = (clicks[0].get("y"), clicks[0].get("x")) if clicks else None
            if picked and picked not in cells:
                st.info(f"No validation image of {plain(picked[0])} was predicted as {plain(picked[1])}.")
            index = cells.index(picked) if picked in cells else next((i for i, (t, p) in enumerate(cells) if t != p), 0)
            cell = st.selectbox("Cell (true -> predicted)", [f"{t} -> {p}" for t, p in cells], index=index, key=f"eval_cell_{picked}")
            true, pred = cell.split(" -> ")
            shown = ev.cell(true, pred)
            st.caption(f"{count(len(shown), 'image')} of {plain(true)} predicted as {plain(pred)}, most confident first")
            cols = st.columns(6)
            for i, p in enumerate(shown[:18]):
                cols[i % 6].image(p["file"], caption=f"{Path(p['file']).name} ({percent(p['confidence'])})", width="stretch")
            st.subheader("Per class")
            per_class = pd.DataFrame(ev.per_class)
            for col in ("precision", "recall", "f1"):
                per_class[col] = per_class[col].map(points)
            st.dataframe(per_class, hide_index=True, key="per_class",
                         column_config={c: st.column_config.NumberColumn(format=TABLE_PERCENT) for c in ("precision", "recall", "f1")})
            st.subheader("Most confident mistakes")
            if not ev.mistakes:
                st.success("No mistakes on the validation split.")
            elif show_cam:
                st.caption("Grad-CAM: where the model saw evidence for the wrong class.")
            cols = st.columns(6)
            for i, m in enumerate(ev.mistakes[:12]):
                shown_image = m["file"]
                if show_cam:
                    try:
                        shown_image = heat_overlay(str(run.dir), stamp, m["file"], m["predicted"])[0]
                    except (BadImage, OSError):
                        pass
                cols[i % 6].image(shown_image, caption=f"{m['true']} -> {m['predicted']} ({percent(m['confidence'])})", width="stretch")

    st.subheader("Download the model")
    fmt = st.selectbox("Format", FORMATS, key="export_format", format_func={
        "safetensors": "safetensors (PyTorch / torchvision)",
        "onnx": "ONNX: pictures in, probabilities out (onnxruntime, any language)",
        "onnx-int8": "ONNX int8: the same, quantized (smaller, faster on CPUs)",
        "torchscript": "TorchScript (C++ / mobile)"}.get)
    if st.button("Prepare model download", key="export_btn"):
        with st.spinner(f"Writing the {fmt} file and checking it on validation images..."):
            try:
                out = export(run, Path(tempfile.mkdtemp()) / f"{run.id}-{fmt}.zip", fmt)
            except ExportError as e:
                st.error(plain(e))
                out = None
        if out:
            st.caption(f"Checked after writing: {describe_check(load_meta(out))}.")
            with st.expander("Model card (MODEL_CARD.md, inside the download)", expanded=True):
                st.markdown(load_card(out))
            st.download_button(f"Download model (.zip: {fmt} + classes + preprocessing + model card)", out.read_bytes(),
                               out.name, "application/zip", key="export_dl")
