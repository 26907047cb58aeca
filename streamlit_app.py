"""TL Studio's home page. The other pages are Streamlit's automatic `pages/` scripts; every page, this one
included, calls `page_setup()` for the shared frame (navigation, sidebar). Logic lives in tl_core."""

import streamlit as st

from pages.ui.shared import choices, dataset_label, device_text, job_manager, page_setup

page_setup("TL Studio")
st.markdown(
    "Fine-tune a pretrained ImageNet backbone on **your own images**, watch it learn, then use it.\n\n"
    "1. **Dataset**: the built-in demo (shapes), a folder, a .zip or a torchvision dataset; checked image by image.\n"
    "2. **Backbones**: ImageNet accuracy, size and speed measured on this machine; pick one.\n"
    "3. **Train**: feature extraction (seconds) or fine-tuning, with live curves. Training keeps running "
    "if you close or refresh the page.\n"
    "4. **Predict**: upload images, evaluate the run, click through its mistakes, download the model."
)
c1, c2 = st.columns(2)
c1.metric("Device", device_text().split(":")[0])
c1.caption(device_text())
job = job_manager().current()
if job:
    s = job.snapshot()
    c2.metric("Training job", s.status_text, f"epoch {s.epoch}/{s.epochs}")
else:
    c2.metric("Training job", "idle")
st.page_link("pages/1_Dataset.py", label=f"Start with the dataset (now: {dataset_label(choices().dataset)})",
             icon=":material/arrow_forward:")
