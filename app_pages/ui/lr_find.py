"""The learning-rate finder as a section of the Train page: the same finder as `lr-find`, on the page's settings."""

import json
import math
from dataclasses import replace

import plotly.express as px
import streamlit as st

from tl_core.config import TrainConfig
from tl_core.data.sources import DatasetSpec
from tl_core.train.lr_find import lr_find


@st.cache_data(max_entries=8, show_spinner=False)
def _sweep(spec: dict, config: str, steps: int):
    bar = st.progress(0.0, text="Sweeping the learning rate...")
    result = lr_find(DatasetSpec(**spec), TrainConfig.from_dict(json.loads(config)), steps,
                     progress=lambda d, n: bar.progress(d / n, text=f"Learning-rate sweep: step {d}/{n}"))
    bar.empty()
    return result


def _use(lr_key: str, lr: float) -> None:
    st.session_state[lr_key] = lr  # in a callback: runs before the widget with this key is drawn again


def render_lr_finder(spec: DatasetSpec, config: TrainConfig, lr_key: str, steps: int = 100) -> float | None:
    """Button -> a short run of the training loop with the page's settings and split, the rate rising -> the loss
    curve with the suggested rate marked, and a button writing it into the page's learning-rate widget (`lr_key`).

    Returns the suggestion once a sweep exists (None before)."""
    with st.expander("Find a learning rate (a short run with these settings, like fastai's lr_find)"):
        setup = (json.dumps(spec.to_dict()), json.dumps(replace(config, lr=None).to_dict()), steps)  # the rate is swept
        ran = st.session_state.get("lr_find_for") == setup
        if not (st.button("Run the learning-rate finder", key="lr_find_run") or ran):
            st.caption(f"About {steps} training steps of this run with a rising learning rate; the loss curve shows "
                       "where training is fastest before it diverges.")
            return None
        st.session_state.lr_find_for = setup
        try:
            result = _sweep(spec.to_dict(), setup[1], steps)
        except (ValueError, RuntimeError) as e:
            st.error(str(e))
            return None
        fig = px.line(x=result.lrs, y=result.losses, log_x=True, labels={"x": "learning rate", "y": "loss (smoothed)"},
                      title=f"Loss against learning rate ({result.backbone}, {result.strategy})")
        fig.add_vline(x=result.suggestion, line_dash="dash", annotation_text=f"suggested {result.suggestion:.1e}")
        st.plotly_chart(fig, key="lr_find_chart")
        st.caption(f"Suggested {result.suggestion:.1e}: {result.reason}.")
        lr = float(f"{result.suggestion:.2g}")
        if math.isfinite(lr):
            st.button(f"Use learning rate {lr:.1e}", key="lr_find_use", on_click=_use, args=(lr_key, lr))
        return result.suggestion
