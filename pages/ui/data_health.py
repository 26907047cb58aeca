"""Dataset page section: likely label mistakes (with drop / relabel), near-duplicates, outliers, balance, a map."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from pages.ui.shared import chosen_backbone, scan_report
from tl_core.data_health import HealthReport, check_health
from tl_core.datasets import ImageDataset
from tl_core.overrides import DROP, RELABEL, clear_override, load_overrides, set_override

PER_PAGE = 8


def render_data_health(ds: ImageDataset, source: str) -> None:
    st.subheader("Data health")
    backbone = chosen_backbone()
    st.caption(f"From {backbone}'s embeddings (cached): every image judged by a head that never saw it.")
    size = st.number_input("Image size for the check (0 = the weights' own)", 0, 1024, 0, key="health_size",
                           help="Side of the square the images are resized to for their embeddings; smaller is faster")
    key = (source, ds.root, backbone, int(size))
    if st.button("Check labels, duplicates and outliers", key="health_run"):
        bar = st.progress(0.0, text="Starting...")
        try:
            report = check_health(ds, backbone, image_size=int(size) or None,
                                  progress=lambda phase, d, n: bar.progress(min(1.0, d / max(n, 1)), text=f"{phase} {d}/{n}"))
        except Exception as e:  # weights missing, too few images...: one clear message
            st.error(f"The check could not run: {e}")
            return
        finally:
            bar.empty()
        st.session_state.health = (key, report)
    if st.session_state.get("health", (None,))[0] != key:
        return
    report: HealthReport = st.session_state.health[1]
    m = st.columns(4)
    m[0].metric("Likely mislabelled", len(report.suspects))
    m[1].metric("Near-duplicate pairs", len(report.duplicates))
    m[2].metric("Across splits (leakage)", sum(p.cross_split for p in report.duplicates))
    m[3].metric("Outliers", len(report.outliers))
    st.info(report.balance.note)
    gallery(ds, report)
    duplicates_and_outliers(report)
    embedding_map(report)


def changed() -> None:
    """An override changes what the dataset holds: drop the cached dataset and scan, then redraw."""
    scan_report.clear()
    st.rerun()


def gallery(ds: ImageDataset, report: HealthReport) -> None:
    st.markdown("**Likely mislabelled images**: your choice is saved beside the dataset (your files are never moved) "
                "and the next scan and training honour it.")
    if not report.suspects:
        st.success("No image's label is disputed by the out-of-fold head.")
        return
    decided = {o.path: o for o in load_overrides(ds)}
    pages = max(1, -(-len(report.suspects) // PER_PAGE))
    page = st.number_input(f"Page (of {pages})", 1, pages, 1, key="suspect_page")
    cols = st.columns(4)
    for i, s in enumerate(report.suspects[(page - 1) * PER_PAGE : page * PER_PAGE]):
        with cols[i % 4].container(border=True, key=f"suspect_{i}"):
            st.image(s.path, width="stretch")
            st.markdown(f"`{Path(s.path).name}` ({s.split})  \ngiven **{s.given}**, suggested **{s.suggested}**  \n"
                        f"score {s.quality:.3f}" + (" (confident learning)" if s.flagged else ""))
            done = decided.get(s.path)
            if done:
                st.caption("dropped" if done.action == DROP else f"relabelled as {done.label}")
                if st.button("Undo", key=f"undo_{s.path}"):
                    clear_override(ds, s.path)
                    changed()
                continue
            a, b = st.columns(2)
            if a.button("Drop", key=f"drop_{s.path}"):
                set_override(ds, s.path, DROP)
                changed()
            if b.button("Relabel", key=f"relabel_{s.path}", help=f"Give it the class {s.suggested}"):
                set_override(ds, s.path, RELABEL, s.suggested)
                changed()


def duplicates_and_outliers(report: HealthReport) -> None:
    if report.duplicates:
        st.markdown("**Near-duplicates** (similar embeddings; across splits they inflate the validation score)")
        st.dataframe(pd.DataFrame([{"similarity": p.similarity, "a": p.a, "b": p.b, "splits": f"{p.split_a} / {p.split_b}",
                                    "classes": f"{p.class_a} / {p.class_b}", "leakage": p.cross_split,
                                    "different classes": p.cross_class} for p in report.duplicates]),
                     hide_index=True, key="dup_table")
    if report.outliers:
        st.markdown("**Outliers** (far from every other image)")
        st.dataframe(pd.DataFrame([vars(o) for o in report.outliers]), hide_index=True, key="outlier_table")


def embedding_map(report: HealthReport) -> None:
    points = pd.DataFrame([{**vars(p), "file": Path(p.path).name, "suspect": "suspect" if p.suspect else "ok"}
                           for p in report.points])
    fig = px.scatter(points, x="x", y="y", color="label", symbol="suspect", hover_name="file",
                     hover_data={"split": True, "path": True, "x": False, "y": False},
                     symbol_map={"ok": "circle", "suspect": "x"},
                     title=f"Embedding map ({report.projection}): suspects marked x")
    fig.update_traces(marker={"size": 7})
    st.plotly_chart(fig, key="embedding_map")
