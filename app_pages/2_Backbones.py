"""Backbones: ImageNet accuracy against speed measured on this device; pick one for training."""

import math

import pandas as pd
import plotly.express as px
import streamlit as st

from app_pages.ui.compare import render_compare
from app_pages.ui.shared import backbone_rows, choices, choose, device_text, speeds
from tl_core import paths
from tl_core.devices import pick_device
from tl_core.formats import NOT_MEASURED, TABLE_PERCENT, count, figure
from tl_core.measure import speed
from tl_core.models.backbones import recommend

st.caption(f"Measured on {device_text()}")

rows = backbone_rows()
measured = speeds()
table = pd.DataFrame([{**r.to_dict(), "ms_per_image": getattr(measured.get(r.name), "ms_per_image", None),
                       "images_per_s": getattr(measured.get(r.name), "images_per_s", None)} for r in rows])
best = recommend(rows)
if any(r.cached for r in rows):
    st.success(f"Recommended: **{best}**, the most accurate small backbone whose weights are on this machine.")
else:  # be truthful offline: nothing is cached, so say what to do rather than promise
    best_info = next(r for r in rows if r.name == best)
    st.success(f"Recommended: **{best}** (small and accurate). Its weights are not on this machine yet: they download "
               f"on first use, or offline put `{best_info.weight_file}` into `{paths.torch_checkpoints()}`, or pass your own "
               "file as *Own weight file* on the Train page.")

f1, f2, f3, f4 = st.columns(4)
families = f1.multiselect("Family", sorted(table.family.unique()), key="bb_family", help="Architectures of one design (empty: all)")
max_size = f2.slider("Max size (MB)", 1, int(table.size_mb.max()) + 1, 120, key="bb_size",
                     help="Size of the weight file: a proxy for memory and for the download")
min_acc = f3.slider("Min ImageNet acc@1", 50.0, 90.0, 60.0, 0.5, key="bb_acc",
                    help="Top-1 accuracy on ImageNet (torchvision's figure): a better backbone usually transfers better")
cached_only = f4.checkbox("Offline weights only", key="bb_cached", help="Only backbones whose weight file is already on this machine")
view = table[(table.size_mb <= max_size) & (table.acc1 >= min_acc)]
if families:
    view = view[view.family.isin(families)]
if cached_only:
    view = view[view.cached]
sort_by = st.selectbox("Sort by", ["acc1", "ms_per_image", "size_mb", "gflops", "params_m", "name"], key="bb_sort",
                       help="Accuracy sorts best first; speed and size sort smallest first")
view = view.sort_values(sort_by, ascending=sort_by in ("ms_per_image", "size_mb", "gflops", "params_m", "name"))

columns = ["name", "family", "params_m", "size_mb", "gflops", "acc1", "acc5", "ms_per_image", "images_per_s", "cached"]
if view.empty:
    st.info("No backbone matches these filters" + (": no backbone's weight file is on this machine yet (untick "
            "*Offline weights only*, or put a weight file into " f"`{paths.torch_checkpoints()}`)." if cached_only else "."))
else:
    shown = view.assign(ms_per_image=view.ms_per_image.map(figure), images_per_s=view.images_per_s.map(lambda v: figure(v, 0)))
    st.dataframe(shown[columns], hide_index=True, key="bb_table", column_config={
        "params_m": st.column_config.NumberColumn("params (M)"), "size_mb": st.column_config.NumberColumn("size (MB)"),
        "acc1": st.column_config.NumberColumn("acc@1", format=TABLE_PERCENT, help="ImageNet top-1 accuracy (torchvision's figure)"),
        "acc5": st.column_config.NumberColumn("acc@5", format=TABLE_PERCENT),
        "ms_per_image": st.column_config.TextColumn("ms/image (batch 1)", help=f"Measured on this device; {NOT_MEASURED}: "
                                                    "not measured yet (Measure on this device, below)"),
        "images_per_s": st.column_config.TextColumn("images/s (batch)"),
        "cached": st.column_config.CheckboxColumn("weights offline")})

to_measure = [n for n in view.name if n in speed.SHORTLIST or len(view) <= 12][:12] or list(speed.SHORTLIST)
if st.button(f"Measure on this device ({count(len(to_measure), 'backbone')})", key="bb_measure"):
    bar = st.progress(0.0)
    speed.measure_many(to_measure, pick_device(),
                       lambda i, n, name: bar.progress(i / n, text=f"Measuring {name} ({i + 1}/{n})" if name else "Done"))
    st.rerun()

plot = view.assign(speed=view.ms_per_image.notna().map({True: "measured here", False: "not measured yet"}),
                   ms_per_image=view.ms_per_image.map(figure), images_per_s=view.images_per_s.map(lambda v: figure(v, 0)))
if not plot.empty:  # every backbone on the catalogue's GFLOPs; measured ones marked, their latency in the hover
    fig = px.scatter(plot, x="gflops", y="acc1", size="size_mb", color="family", symbol="speed", hover_name="name",
                     hover_data=["params_m", "acc5", "ms_per_image", "images_per_s", "cached"], log_x=True,
                     symbol_map={"measured here": "diamond", "not measured yet": "circle"},
                     title="ImageNet accuracy against compute (GFLOPs); diamonds: speed measured on this device",
                     labels={"gflops": "GFLOPs (catalogue)", "acc1": "ImageNet acc@1 (%)"})
    if best in set(plot.name):
        b = plot[plot.name == best].iloc[0]
        fig.add_annotation(x=math.log10(b.gflops), y=b.acc1, text=f"recommended: {best}", showarrow=True)
    st.plotly_chart(fig, key="bb_scatter")

names = list(table.name)
current = choices().backbone or best
pick = st.selectbox("Backbone for training", names, index=names.index(current) if current in names else 0, key="bb_pick")
row = table[table.name == pick].iloc[0]
if not row.cached:
    st.warning(f"{pick}'s weights ({row.weight_file}) are not on this machine: they download on first use, "
               "or train it from scratch (much less accurate).")
if st.button("Use for training", type="primary", key="bb_use"):
    choose(f"{pick} selected: go to **Train**.", backbone=pick)

render_compare()
