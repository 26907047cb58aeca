"""Predict: classify uploaded images with a run; evaluate it and click through its mistakes."""

import tempfile
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from pages.ui.shared import choices, choose, page_setup
from tl_core import paths
from tl_core.predict import Predictor, evaluate, export
from tl_core.runs import latest_finished, list_runs

page_setup("Predict")
runs = [r for r in list_runs(paths.runs_dir()) if r.has_checkpoint() and not r.broken]
if not runs:
    st.info("No trained run yet: train one on the **Train** page first.")
    st.stop()

default = choices().run
ids = [r.id for r in runs]
latest = latest_finished(paths.runs_dir())
index = ids.index(default) if default in ids else ids.index(latest.id) if latest and latest.id in ids else 0
best_acc = {r.id: r.summary.get("best_val_accuracy") or 0.0 for r in runs}
run_id = st.selectbox("Run", ids, index=index, key="predict_run", format_func=lambda i: f"{i} (best val acc {best_acc[i]:.3f})")
if run_id != default:
    choose(run=run_id)
run = next(r for r in runs if r.id == run_id)
stamp = (run.dir / "best.safetensors").stat().st_mtime


@st.cache_resource(max_entries=3, show_spinner="Loading the model...")
def predictor(run_dir: str, stamp: float) -> Predictor:
    return Predictor.from_run(run_dir)


@st.cache_data(max_entries=5, show_spinner=False)
def evaluation(run_dir: str, stamp: float):
    bar = st.progress(0.0, text="Evaluating...")
    ev = evaluate(run_dir, progress=lambda d, n: bar.progress(d / n, text=f"Evaluating {d}/{n}"))
    bar.empty()
    return ev


tab_predict, tab_eval = st.tabs(["Classify images", "Evaluate the run"])
with tab_predict:
    k = st.slider("Top-k", 1, max(1, len(run.classes)), min(3, len(run.classes)), key="top_k")
    files = st.file_uploader("Images", type=["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"],
                             accept_multiple_files=True, key="predict_upload")
    images = list(files or [])
    if st.toggle("Use the camera", key="camera_on"):
        shot = st.camera_input("Take a picture", key="camera")
        if shot is not None:
            images.append(shot)
    if images:
        preds = predictor(str(run.dir), stamp).predict(images, top_k=k)
        for img, p in list(zip(images, preds))[:24]:
            a, b = st.columns([1, 2])
            if p.error:
                a.error(f"{p.file}: {p.error}")
                continue
            a.image(img.getvalue(), caption=p.file, width="stretch")
            b.markdown(f"**{p.top[0][0]}** ({p.top[0][1]:.1%})")
            df = pd.DataFrame(p.top, columns=["class", "probability"])
            bars = px.bar(df, x="probability", y="class", orientation="h", range_x=[0, 1], height=80 + 40 * len(df))
            bars.update_yaxes(autorange="reversed")  # most likely class on top
            b.plotly_chart(bars, key=f"bars_{p.file}_{id(img)}")
        table = pd.DataFrame([{"file": p.file, "prediction": p.top[0][0] if p.top else None,
                               "probability": p.top[0][1] if p.top else None, "error": p.error,
                               "top_k": "; ".join(f"{c} {v:.3f}" for c, v in p.top)} for p in preds])
        st.dataframe(table, hide_index=True, key="pred_table")
        st.download_button("Download results (CSV)", table.to_csv(index=False), "predictions.csv", "text/csv", key="pred_csv")

with tab_eval:
    if st.button("Evaluate on the validation split", key="eval_btn") or st.session_state.get("evaluated") == run.id:
        st.session_state.evaluated = run.id
        ev = evaluation(str(run.dir), stamp)
        st.metric("Validation accuracy", f"{ev.accuracy:.3f}", f"{len(ev.mistakes)} mistakes of {len(ev.predictions)}",
                  delta_color="off")
        grid = pd.DataFrame([{"true": t, "predicted": p, "images": ev.confusion_matrix[i][j]}
                             for i, t in enumerate(ev.classes) for j, p in enumerate(ev.classes)])
        fig = px.scatter(grid, x="predicted", y="true", color="images", text="images", color_continuous_scale="Blues",
                         title="Confusion matrix: click a cell to see its images")
        fig.update_traces(marker={"symbol": "square", "size": 46, "line": {"width": 0}}, textfont={"color": "#111"})
        fig.update_xaxes(categoryorder="array", categoryarray=ev.classes, side="top")
        fig.update_yaxes(categoryorder="array", categoryarray=ev.classes, autorange="reversed")
        fig.update_layout(height=180 + 62 * len(ev.classes), clickmode="event+select")
        clicked = st.plotly_chart(fig, key="confusion", on_select="rerun", selection_mode="points")
        cells = [(t, p) for i, t in enumerate(ev.classes) for j, p in enumerate(ev.classes) if ev.confusion_matrix[i][j]]
        points = clicked.selection.points if clicked and clicked.selection else []
        picked = (points[0].get("y"), points[0].get("x")) if points else None
        if picked and picked not in cells:
            st.info(f"No validation image of {picked[0]} was predicted as {picked[1]}.")
        index = cells.index(picked) if picked in cells else next((i for i, (t, p) in enumerate(cells) if t != p), 0)
        cell = st.selectbox("Cell (true -> predicted)", [f"{t} -> {p}" for t, p in cells], index=index, key=f"eval_cell_{picked}")
        true, pred = cell.split(" -> ")
        shown = ev.cell(true, pred)
        st.caption(f"{len(shown)} image(s) of {true} predicted as {pred}, most confident first")
        cols = st.columns(6)
        for i, p in enumerate(shown[:18]):
            cols[i % 6].image(p["file"], caption=f"{Path(p['file']).name} ({p['confidence']:.2f})", width="stretch")
        st.subheader("Per class")
        st.dataframe(pd.DataFrame(ev.per_class), hide_index=True, key="per_class")
        st.subheader("Most confident mistakes")
        if not ev.mistakes:
            st.success("No mistakes on the validation split.")
        cols = st.columns(6)
        for i, m in enumerate(ev.mistakes[:12]):
            cols[i % 6].image(m["file"], caption=f"{m['true']} -> {m['predicted']} ({m['confidence']:.2f})", width="stretch")
    if st.button("Prepare model download", key="export_btn"):
        with st.spinner("Writing and checking the model file..."):
            out = export(run, Path(tempfile.mkdtemp()) / f"{run.id}.zip")
        st.download_button("Download model (.zip: safetensors + classes + preprocessing)", out.read_bytes(),
                           out.name, "application/zip", key="export_dl")
        st.caption("Checked after writing: re-loaded and compared tensor by tensor and output by output.")
