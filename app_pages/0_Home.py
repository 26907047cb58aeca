"""Home: the three steps (data, backbone, train and use) with what is done, and a one-click Quick start.
A flat page script run by the frame (`streamlit_app.py`), which has drawn the title and sidebar. Logic lives in tl_core."""

import streamlit as st

from app_pages.ui.shared import backbone_rows, choices, chosen_backbone, dataset_label, device_text, job_manager, plain, scan_report
from tl_core import paths
from tl_core.config import TrainConfig
from tl_core.data.sources import DatasetError
from tl_core.formats import count
from tl_core.jobs.manager import JobBusy
from tl_core.train.runs import latest_finished

st.markdown("Fine-tune a pretrained ImageNet backbone on **your own images**, watch it learn, then use it. "
            f"Running on {device_text()}.")

spec, name = choices().dataset, chosen_backbone()
info = next(r for r in backbone_rows() if r.name == name)
jobs = job_manager()
running = jobs.active()
last = latest_finished(paths.runs_dir(), spec.source)  # of this dataset: another's run is no answer here


def step(column, number: int, title: str, done: bool, body: str, page: str, link: str) -> None:
    with column.container(border=True, key=f"step_{number}"):
        st.markdown(f"#### {':material/check_circle:' if done else ':material/radio_button_unchecked:'} {number}. {title}")
        st.markdown(body)
        st.page_link(page, label=link, icon=":material/arrow_forward:")


try:
    report = scan_report(spec)
    n = report.split_counts()
    data_ok = report.n_images > 0
    skipped = f", {count(len(report.skipped), 'file')} skipped" if report.skipped else ""
    data_text = (f"**{plain(dataset_label(spec))}**: {len(report.classes)} classes, {n.get('train', 0)} training and "
                 f"{n.get('val', 0)} validation images{skipped}.")
except DatasetError as e:
    data_ok, data_text = False, f"**{plain(dataset_label(spec))}** cannot be used: {plain(e)}"
weights = "weights on this machine" if info.cached else "weights download on first use"
chosen = "chosen" if choices().backbone else "recommended"
if running:
    s = running.snapshot()
    train_text = f"Job {s.id} on {plain(dataset_label(s.dataset))}: **{s.status_text}**, epoch {s.epoch}/{s.epochs}."
elif last:
    train_text = (f"Last trained on this dataset: **{plain(last.id)}**, {last.accuracy().label()}. "
                  "Classify images, evaluate, download it.")
else:
    train_text = "No trained model yet."
c1, c2, c3 = st.columns(3)
step(c1, 1, "Data", data_ok, data_text, "app_pages/1_Dataset.py", "Choose or check the data")
step(c2, 2, "Backbone", bool(choices().backbone) or info.cached,
     f"**{name}** ({chosen}; ImageNet acc@1 {info.acc1:.1f}%, {info.size_mb} MB, {weights}).", "app_pages/2_Backbones.py",
     "Compare backbones")
step(c3, 3, "Train and use", last is not None, train_text, "app_pages/4_Predict.py" if last else "app_pages/3_Train.py",
     "Use the model" if last else "Train a model")

st.subheader("Quick start")
quick = TrainConfig(backbone=name)  # the defaults: feature extraction on pretrained weights, fitted head
st.markdown(f"One click trains **{name}** on **{plain(dataset_label(spec))}** with good defaults: the backbone stays frozen, "
            "every image is embedded once and a new head is fitted to convergence (seconds to minutes on a CPU). "
            "You then watch it on the Train page.")
if not info.cached:
    st.caption(f"{name}'s weights are not on this machine: they download first (about {info.size_mb:.0f} MB). Offline, put "
               f"`{info.weight_file}` into `{paths.torch_checkpoints()}` or choose a backbone whose weights are there.")
if st.button(f"Quick start: train {name} on {plain(dataset_label(spec))}", type="primary", key="quick_start",
             disabled=bool(running) or not data_ok,
             help="A job is running: watch it on the Train page" if running else "Feature extraction with the defaults"):
    try:
        jobs.start(spec, quick)
    except (JobBusy, ValueError) as err:
        st.error(plain(err))
    else:
        st.switch_page("app_pages/3_Train.py")
