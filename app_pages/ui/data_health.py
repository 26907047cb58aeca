"""Dataset page section: likely label mistakes (with drop / relabel), near-duplicates, outliers, balance, a map."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from app_pages.ui.config_form import option_widget
from app_pages.ui.shared import chosen_backbone, plain, scan_report
from tl_core.data.images import BadImage, open_rgb
from tl_core.data.overrides import DROP, RELABEL, clear_override, load_overrides, set_override
from tl_core.data.sources import ImageDataset
from tl_core.features.health import HealthReport, check_health

PER_PAGE = 8


def relative_name(path: str, root: str) -> str:
    """A file as the user knows it: inside the dataset (`train/cat/x.jpg`), never as a server path."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return Path(path).name


def render_data_health(ds: ImageDataset, source: str) -> None:
    st.subheader("Data health")
    backbone = chosen_backbone()
    st.caption(f"From {backbone}'s embeddings (cached): every image judged by a head that never saw it.")
    a, b = st.columns(2)
    size = a.number_input("Image size for the check (0 = the weights' own)", 0, 1024, 0, key="health_size",
                          help="Side of the square the images are resized to for their embeddings; smaller is faster")
    fit = option_widget("fit", "health_fit", b)
    key = (source, ds.root, backbone, int(size), fit)
    if st.button("Check labels, duplicates and outliers", key="health_run"):
        bar = st.progress(0.0, text="Starting...")
        try:
            report = check_health(ds, backbone, image_size=int(size) or None, fit=fit,
                                  progress=lambda phase, d, n: bar.progress(min(1.0, d / max(n, 1)), text=f"{phase} {d}/{n}"))
        except Exception as e:  # weights missing, too few images...: one clear message
            st.error(f"The check could not run: {plain(e)}")
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
    st.info(plain(report.balance.note))  # it names the smallest class
    gallery(ds, report)
    duplicates_and_outliers(ds, report)
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
            st.markdown(f"{plain(Path(s.path).name)} ({s.split})  \ngiven **{plain(s.given)}**, suggested **{plain(s.suggested)}**  \n"
                        f"score {s.quality:.3f}" + (" (confident learning)" if s.flagged else ""))
            done = decided.get(s.path)
            if done:
                st.caption("dropped" if done.action == DROP else f"relabelled as {plain(done.label)}")
                if st.button("Undo", key=f"undo_{s.path}"):
                    clear_override(ds, s.path)
                    changed()
                continue
            a, b = st.columns(2)
            if a.button("Drop", key=f"drop_{s.path}"):
                set_override(ds, s.path, DROP)
                changed()
            sets = ds.multi_label  # a label set is the CSV's to change: only a drop is kept beside it
            if b.button("Relabel", key=f"relabel_{s.path}", disabled=sets,
                        help="Edit the picture's labels in the CSV" if sets else f"Give it the class {s.suggested}"):
                set_override(ds, s.path, RELABEL, s.suggested)
                changed()


def duplicates_and_outliers(ds: ImageDataset, report: HealthReport) -> None:
    decided = {o.path: o for o in load_overrides(ds)}
    if report.duplicates:
        st.markdown("**Near-duplicates** (similar embeddings, or copies found by their perceptual hash; across splits "
                    "they inflate the validation score, under two classes one label is wrong)")
        st.dataframe(pd.DataFrame([{"similarity": p.similarity, "found by": p.found_by, "a": relative_name(p.a, ds.root),
                                    "b": relative_name(p.b, ds.root), "splits": f"{p.split_a} / {p.split_b}",
                                    "classes": f"{p.class_a} / {p.class_b}", "leakage": p.cross_split,
                                    "different classes": p.cross_class, "identical files": p.exact} for p in report.duplicates]),
                     hide_index=True, key="dup_table")
    if report.outliers:
        st.markdown("**Outliers**: pictures far from every other image (another subject, a placeholder, a scan), "
                    "most distant first. Drop those that do not belong: saved beside the dataset like the gallery's.")
        cols = st.columns(6)
        for i, o in enumerate(report.outliers[:6]):
            with cols[i].container(border=True, key=f"outlier_{i}"):
                st.image(o.path, caption=f"{Path(o.path).name} ({o.label}, {o.split}), z {o.z:.1f}", width="stretch")
                if o.path in decided:
                    st.caption("dropped" if decided[o.path].action == DROP else f"relabelled as {plain(decided[o.path].label)}")
                    if st.button("Undo", key=f"undo_outlier_{o.path}"):
                        clear_override(ds, o.path)
                        changed()
                elif st.button("Drop", key=f"drop_outlier_{o.path}"):
                    set_override(ds, o.path, DROP)
                    changed()
        st.dataframe(pd.DataFrame([{"file": relative_name(o.path, ds.root), "label": o.label, "split": o.split, "z": round(o.z, 1)}
                                   for o in report.outliers]), hide_index=True, key="outlier_table")


MAP_PICTURES_MAX = 500  # past this many, pictures on the map are a blur and slow to send
SHOW_SELECTED = 12


@st.cache_data(max_entries=5000, show_spinner=False)
def thumbnail_uri(path: str, side: int = 64) -> str | None:
    """A small JPEG data URI of one image for the map (decoded at reduced size); None when it cannot be read."""
    try:
        img = open_rgb(path, min_side=side)
    except BadImage:
        return None
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def map_figure(report: HealthReport, pictures: bool):
    """Points coloured by class, suspects as x and outliers as diamonds; with `pictures`, each image drawn at its point."""
    points = pd.DataFrame([{**vars(p), "file": Path(p.path).name, "mark": p.mark} for p in report.points])
    fig = px.scatter(points, x="x", y="y", color="label", symbol="mark", hover_name="file", custom_data=["path"],
                     hover_data={"split": True, "mark": True, "x": False, "y": False},
                     symbol_map={"ok": "circle", "suspect": "x", "outlier": "diamond"},
                     title=f"Embedding map ({report.projection}): suspects x, outliers diamonds; "
                           "click or lasso points to see the pictures")
    fig.update_traces(marker={"size": 12 if pictures else 7, "opacity": 0.3 if pictures else 0.9})
    fig.update_layout(height=620, legend_title_text="class, check")
    fig.update_xaxes(showticklabels=False, title=None)  # projection units mean nothing; keep distances true
    fig.update_yaxes(showticklabels=False, title=None, scaleanchor="x", scaleratio=1)
    if pictures:
        span = max(points.x.max() - points.x.min(), points.y.max() - points.y.min(), 1e-6)
        size = span / max(12.0, len(points) ** 0.5 * 1.6)
        images = [(p, thumbnail_uri(p.path)) for p in report.points]
        fig.update_layout(images=[  # at once: add_layout_image one by one is quadratic (9 s for 200 pictures)
            {"source": uri, "x": p.x, "y": p.y, "xref": "x", "yref": "y", "sizex": size, "sizey": size,
             "xanchor": "center", "yanchor": "middle", "layer": "below"} for p, uri in images if uri])
    return fig


def embedding_map(report: HealthReport) -> None:
    pictures = len(report.points) <= MAP_PICTURES_MAX and st.toggle(
        "Draw the pictures on the map", value=True, key="map_pictures",
        help=f"Each image at its place on the map (up to {MAP_PICTURES_MAX} images); off, a dot per image.")
    event = st.plotly_chart(map_figure(report, pictures), key="embedding_map", on_select="rerun",
                            selection_mode=("points", "box", "lasso"))
    chosen = [pt["customdata"][0] for pt in event.selection.points if pt.get("customdata")] if event else []
    if not chosen:
        st.caption("Click a point, or draw a box or a lasso around a group, to see those pictures here.")
        return
    by_path = {p.path: p for p in report.points}
    st.markdown(f"**{len(chosen)} selected**" + (f" (the first {SHOW_SELECTED} shown)" if len(chosen) > SHOW_SELECTED else ""))
    cols = st.columns(6)
    for i, path in enumerate(chosen[:SHOW_SELECTED]):
        p = by_path[path]
        cols[i % 6].image(path, caption=f"{Path(path).name} · {p.label} · {p.split}" + ("" if p.mark == "ok" else f" · {p.mark}"),
                          width="stretch")
