"""Backbones page section: accuracy on *your* data (fitted head on cached embeddings) against measured latency."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from app_pages.ui.config_form import option_widget
from app_pages.ui.shared import backbone_rows, choices, dataset_label, plain, scan_report
from tl_core.config import TrainConfig
from tl_core.data.sources import DatasetError
from tl_core.features.compare import Comparison, compare, pareto_front, recommend
from tl_core.formats import PLOTLY_PERCENT, TABLE_PERCENT, TABLE_SECONDS, count, points
from tl_core.measure.speed import SHORTLIST


def render_compare() -> None:
    spec = choices().dataset
    st.subheader("Which backbone for your data")
    st.caption(f"Dataset **{plain(dataset_label(spec))}**: each backbone's embeddings (cached), a linear head fitted with "
               "cross-validated regularisation, and its validation accuracy: the figure feature extraction reaches.")
    rows = backbone_rows()
    cached = [r.name for r in rows if r.cached and r.name in SHORTLIST] or [r.name for r in rows if r.cached][:3]
    a, b, c = st.columns([4, 1, 1])
    names = a.multiselect("Backbones to compare", [r.name for r in rows], default=cached or ["mobilenet_v2"], key="cmp_names")
    size = b.number_input("Image size (0 = the weights' own)", 0, 1024, 0, key="cmp_size",
                          help="Side of the square the images are resized to; smaller is faster and usually less accurate")
    fit = option_widget("fit", "cmp_fit", c)
    key = (spec, int(size), fit, tuple(names))
    if st.button(f"Compare {count(len(names), 'backbone')} on this dataset", key="cmp_run", disabled=not names):
        bar = st.progress(0.0, text="Starting...")
        try:
            ds = scan_report(spec).dataset
            found = compare(ds, names, TrainConfig(image_size=int(size) or None, fit=fit),
                            lambda phase, d, n: bar.progress(min(1.0, d / max(n, 1)), text=f"{phase} {d}/{n}"))
        except (DatasetError, ValueError) as e:  # no val split, too few images...: one clear message
            st.error(f"The comparison could not run: {plain(e)}")
            return
        finally:
            bar.empty()
        st.session_state.comparison = (key, found)
    if st.session_state.get("comparison", (None,))[0] != key:
        return
    show(st.session_state.comparison[1])


def accuracy_latency_figure(done: list[Comparison]) -> tuple[go.Figure, pd.DataFrame]:
    """Your-data accuracy (0-100%, never past it) against measured latency, the Pareto front joined by a line."""
    front = pareto_front(done)
    table = pd.DataFrame([{**r.to_dict(), "pareto": r.name in front} for r in done])
    fig = px.scatter(table, x="ms_per_image", y="val_accuracy", color="pareto", text="name", hover_name="name",
                     hover_data=["cv_accuracy", "size_mb", "seconds"], log_x=True,
                     labels={"ms_per_image": "measured latency (ms/image, batch 1)", "val_accuracy": "your validation accuracy"},
                     title="Accuracy on your data against measured latency (Pareto front in colour)")
    line = table[table.pareto].sort_values("ms_per_image")
    fig.add_scatter(x=line.ms_per_image, y=line.val_accuracy, mode="lines", name="Pareto front", line={"dash": "dot"})
    fig.update_traces(textposition="top center", selector={"mode": "markers+text"})
    fig.update_yaxes(tickformat=PLOTLY_PERCENT, range=[0, 1.05])
    return fig, table


def show(found) -> None:
    for r in found:
        if r.error:
            st.warning(f"{r.name}: not compared. {r.error}")
    done = [r for r in found if r.val_accuracy is not None]
    if not done:
        return
    best = recommend(done)
    fig, table = accuracy_latency_figure(done)
    st.plotly_chart(fig, key="cmp_chart")
    st.success(f"Recommended for this dataset: **{best}**: the fastest backbone within one point of the best accuracy.")
    shown = table.assign(val_accuracy=table.val_accuracy.map(points), cv_accuracy=table.cv_accuracy.map(points))
    st.dataframe(shown[["name", "val_accuracy", "cv_accuracy", "ms_per_image", "size_mb", "seconds", "pareto"]],
                 hide_index=True, key="cmp_table", column_config={
                     "val_accuracy": st.column_config.NumberColumn("val accuracy", format=TABLE_PERCENT),
                     "cv_accuracy": st.column_config.NumberColumn("CV accuracy", format=TABLE_PERCENT),
                     "ms_per_image": st.column_config.NumberColumn("ms/image", format="%.1f"),
                     "seconds": st.column_config.NumberColumn("time", format=TABLE_SECONDS)})
