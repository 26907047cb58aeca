"""Dataset: choose a source, see what is in it and what is wrong with it."""

from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from app_pages.ui.data_health import relative_name, render_data_health
from app_pages.ui.shared import choices, choose, dataset_label, flash, plain, scan_report
from tl_core import paths
from tl_core.data import builder
from tl_core.data.sources import DEMO_LABELS, TORCHVISION_DATASETS, DatasetError, DatasetSpec, resolve_in_root, save_upload, server_sources
from tl_core.formats import count


def add_class(folder: Path) -> None:
    """The Add class button's callback: create the class, then empty the field for the next name."""
    try:
        builder.add_class(folder, st.session_state.build_class)
        st.session_state.build_class = ""
    except DatasetError as e:
        st.session_state.build_class_error = str(e)


spec = choices().dataset

kinds = ["Built-in demo", "Folder or CSV on the server", "Upload a .zip", "torchvision dataset", "Build in the browser"]
current_kind = (0 if spec.source in ("demo", DEMO_LABELS) else 3 if spec.source.startswith("torchvision:")
                else 2 if spec.source.lower().endswith(".zip") else 1)
source = st.radio("Source", kinds, index=current_kind, horizontal=True, key="dataset_kind")
if source == "Built-in demo":
    st.caption("Five classes of shapes drawn on noisy backgrounds, generated on this machine (no download); or pictures "
               "of one or two shapes each, described by a label CSV (multi-label).")
    left, right = st.columns(2)
    if left.button("Use the demo dataset", key="use_demo"):
        choose("Using the demo dataset.", source="demo")
    if right.button("Use the multi-label demo", key="use_demo_labels"):
        choose("Using the multi-label demo.", source=DEMO_LABELS)
elif source == "Folder or CSV on the server":
    root = paths.data_root()
    st.caption(f"Folders and label CSVs inside the data root `{root}` (set TL_STUDIO_DATA_ROOT to change it). A folder: "
               "`train/` and `val/` folders of class folders, or class folders only. A CSV: a header naming the picture "
               "column and the label column (such as `image,labels`), paths relative to the CSV's folder, an optional "
               "`split` column; labels joined by the separator below make a multi-label dataset.")
    folders = server_sources(root)
    rel = (st.selectbox("Folder or CSV", folders, key="server_folder") if folders
           else st.text_input("Folder or CSV (relative to the data root)"))
    separator = st.text_input("Label separator (CSV)", spec.separator, max_chars=1, key="label_separator",
                              help="A CSV cell such as `ant;bee` gives the picture both labels")
    if st.button("Use this folder", key="use_folder", disabled=not rel or not separator):
        try:
            folder = resolve_in_root(rel, root)
        except DatasetError as e:
            st.error(plain(e))
        else:
            choose(f"Using {plain(folder.name)}.", source=str(folder), separator=separator)
elif source == "Upload a .zip":
    up = st.file_uploader("A .zip of train/ and val/ folders, of class folders, or of pictures with one label .csv at "
                          "its top", type=["zip"], key="zip_upload")
    if up is not None and st.button("Unpack and use", key="use_zip"):
        bar = st.progress(0.0, text="Saving the upload...")
        dest = save_upload(up.name, up.getbuffer(), lambda f: bar.progress(f, text="Saving the upload..."))
        try:
            with st.spinner("Unpacking safely..."):
                scan_report(DatasetSpec(str(dest), spec.val_fraction, spec.split_seed))
            choose(f"Using {plain(up.name)}.", source=str(dest))
        except DatasetError as e:
            st.error(plain(e))
        bar.empty()
elif source == "Build in the browser":
    root = paths.data_root()
    st.caption(f"Name the classes, add pictures by upload or webcam, watch the counts grow, then train. The dataset is "
               f"saved as ordinary class folders inside the data root `{root}`.")
    name = st.text_input("Dataset name", "my-dataset", key="build_name")
    try:
        folder = builder.dataset_dir(root, name)
    except DatasetError as e:
        st.error(plain(e))
        st.stop()
    a, b = st.columns([3, 1])
    a.text_input("New class", key="build_class", placeholder="e.g. cats")
    b.button("Add class", key="build_add_class", on_click=add_class, args=(folder,),
             disabled=not st.session_state.get("build_class"))
    if st.session_state.get("build_class_error"):
        st.error(plain(st.session_state.pop("build_class_error")))
    counts = builder.class_counts(folder)
    if counts:
        target = st.selectbox("Add pictures to", list(counts), key="build_target")
        batch = st.session_state.setdefault("build_batch", 0)  # a new uploader after each add: files never carry over
        files = st.file_uploader("Pictures", type=["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"],
                                 accept_multiple_files=True, key=f"build_files_{batch}") or []
        shot = st.camera_input("Or take a picture with the webcam", key=f"build_camera_{batch}")
        if st.button(f"Add to {plain(target)}", key="build_add_images", disabled=not files and shot is None):
            added, refused = 0, []
            for f in [*files, *([shot] if shot is not None else [])]:
                try:
                    builder.add_image(folder, target, f.getvalue())
                    added += 1
                except DatasetError as e:
                    refused.append(f"{f.name}: {e}")
            st.session_state.build_batch = batch + 1
            st.session_state.build_refused = refused
            flash(f"Added {count(added, 'picture')} to {plain(target)}.")
            st.rerun()
        for line in st.session_state.get("build_refused", []):
            st.error(plain(line))
        st.dataframe(pd.DataFrame([{"class": c, "images": n} for c, n in counts.items()]), hide_index=True, key="build_counts")
        ready = sum(n >= 2 for n in counts.values()) >= 2
        if st.button("Use this dataset", key="build_use", type="primary", disabled=not ready,
                     help=None if ready else "Two classes with at least two pictures each are needed."):
            choose(f"Using {plain(folder.name)}.", source=str(folder))
else:
    name = st.selectbox("Dataset", TORCHVISION_DATASETS, key="tv_name")
    st.caption("Downloaded from the internet on first use into TL Studio's folder.")
    if st.button("Download and use", key="use_tv"):
        try:
            with st.spinner(f"Downloading {name}..."):
                scan_report(DatasetSpec(f"torchvision:{name}", spec.val_fraction, spec.split_seed))
            choose(f"Using {name}.", source=f"torchvision:{name}")
        except DatasetError as e:
            st.error(plain(e))

try:
    report = scan_report(spec)
except DatasetError as e:
    st.error(f"{plain(dataset_label(spec))}: {plain(e)}")
    st.stop()

st.subheader(plain(report.name))
if report.split_source != "folders":
    st.caption("This dataset has no validation folder: usable images are split at random, per class. "
               "Training uses exactly this split.")
    col1, col2 = st.columns(2)
    frac = col1.slider("Validation fraction", 0.05, 0.5, float(spec.val_fraction), 0.05, key="val_fraction",
                       help="Share of each class held out to measure accuracy (default 20%); never trained on")
    seed = col2.number_input("Split seed", 0, 10_000, int(spec.split_seed), key="split_seed",
                             help="Which images are held out: the same seed gives the same split (the training seed never changes it)")
    if frac != spec.val_fraction or seed != spec.split_seed:
        choose(val_fraction=frac, split_seed=int(seed))

if report.multi_label:
    sets = pd.Series(["; ".join(report.classes[y] for y in im.label_set) for im in report.images]).value_counts()
    st.info(f"Multi-label: {len(report.images)} pictures with {len(sets)} different label sets (each picture may have "
            "several labels). Training fits one yes/no output per label; accuracy counts a picture right when its whole "
            "label set is. The counts below are per label.")
counts = report.counts
m = st.columns(4)
m[0].metric("Classes", len(report.classes))
for col, split in zip(m[1:], ("train", "val")):
    col.metric(f"{split} images", sum(counts.get(split, {}).values()))
m[3].metric("Problems", len(report.problems), help="Skipped files (left out of training) and warnings about used images")
if report.skipped:
    st.caption(f"Left out of training: {len(report.skipped)} (files or class folders); the counts are of usable images.")

rows = [{"split": sp, "class": cl, "images": n} for sp, per in counts.items() for cl, n in per.items()]
st.plotly_chart(px.bar(pd.DataFrame(rows), x="class", y="images", color="split", barmode="group",
                       title="Images per class and split"), key="counts_chart")

st.subheader("Samples")
g1, g2 = st.columns([3, 1])
cls = g1.selectbox("Label" if report.multi_label else "Class", report.classes, key="sample_class")
label = report.classes.index(cls)
files = [im.path for im in report.images if label in im.label_set]
per_page = 12
pages = max(1, -(-len(files) // per_page))
page = g2.number_input(f"Page (of {pages})", 1, pages, 1, key="sample_page")
shown = files[(page - 1) * per_page : page * per_page]
cols = st.columns(6)
labels_of = {im.path: "; ".join(report.classes[y] for y in im.label_set) for im in report.images} if report.multi_label else {}
for i, f in enumerate(shown):
    cols[i % 6].image(f, caption=Path(f).name + (f" ({labels_of[f]})" if f in labels_of else ""), width="stretch")

if report.images:
    sizes = pd.DataFrame([{"width": im.width, "height": im.height, "class": report.classes[im.label], "mode": im.mode}
                          for im in report.images])
    distinct = sizes[["width", "height"]].drop_duplicates()
    if len(distinct) == 1:  # one dot on a 95-97 axis says nothing: say it in words
        st.caption(f"Image sizes: all {len(sizes)} images are {distinct.width.iloc[0]} x {distinct.height.iloc[0]} pixels.")
    else:
        top = int(max(sizes.width.max(), sizes.height.max()) * 1.05) + 1  # from zero, same scale both ways
        fig = px.scatter(sizes, x="width", y="height", color="class", hover_data=["mode"], opacity=0.6,
                         title=f"Image sizes ({len(distinct)} different, median {int(sizes.width.median())} x "
                               f"{int(sizes.height.median())} pixels)", range_x=[0, top], range_y=[0, top])
        st.plotly_chart(fig, key="size_chart")

st.subheader("Problems")
if report.problems:
    st.caption("Counts above are of usable images only. Training leaves out the skipped files and records why; "
               "the other rows are warnings about images it uses.")
    st.dataframe(pd.DataFrame([{"file": relative_name(p.path, report.root), "reason": p.reason,
                                "used in training": "no" if p in report.skipped else "yes"} for p in report.problems]),
                 hide_index=True)
else:
    st.success("No problems found: every file is a readable image and every class is in every split.")

render_data_health(report.dataset, spec.source)
