"""TL Studio: a thin router. Pages are flat scripts in pages/; everything they do is in tl_core."""

import streamlit as st

st.set_page_config(page_title="TL Studio", page_icon=":material/model_training:", layout="wide")

from pages._shared import choices, device_text, job_manager, page_setup, use_router  # noqa: E402  (after the page config)

use_router()  # before st.navigation, which would otherwise leave Streamlit's automatic page list in place


def home() -> None:
    st.title("TL Studio")
    page_setup()
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
        c2.metric("Training job", s["status"], f"epoch {s['epoch']}/{s['epochs']}")
    else:
        c2.metric("Training job", "idle")
    st.page_link(DATASET, label=f"Start with the dataset (now: {choices()['dataset']})", icon=":material/arrow_forward:")


DATASET = st.Page("pages/1_Dataset.py", title="Dataset", icon=":material/photo_library:")
pages = [
    st.Page(home, title="Home", icon=":material/home:", default=True),
    DATASET,
    st.Page("pages/2_Backbones.py", title="Backbones", icon=":material/speed:"),
    st.Page("pages/3_Train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/4_Predict.py", title="Predict", icon=":material/image_search:"),
]
st.navigation(pages).run()
