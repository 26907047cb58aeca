"""The learning-rate finder as a section any page can show (the Train page calls `render_lr_finder`)."""

import math

import plotly.express as px
import streamlit as st

from tl_core.train.lr_find import lr_find


@st.cache_data(max_entries=8, show_spinner=False)
def _sweep(source: str, backbone: str, strategy: str, image_size: int | None, steps: int):
    bar = st.progress(0.0, text="Sweeping the learning rate...")
    result = lr_find(source, backbone, strategy, steps=steps, image_size=image_size,
                     progress=lambda d, n: bar.progress(d / n, text=f"Learning-rate sweep: step {d}/{n}"))
    bar.empty()
    return result


def _use(lr_key: str, lr: float) -> None:
    st.session_state[lr_key] = lr  # in a callback: runs before the widget with this key is drawn again


def render_lr_finder(source: str, backbone: str, strategy: str = "finetune", image_size: int | None = None,
                     lr_key: str = "train_lr", steps: int = 100) -> float | None:
    """Button -> a short sweep (loss against lr, log scale) -> suggested lr and a button writing it into `lr_key`.

    Returns the suggestion once a sweep exists (None before). `lr_key` is the session key of the page's
    learning-rate widget.
    """
    with st.expander("Find a learning rate (a short sweep, like fastai's lr_find)"):
        setup = (source, backbone, strategy, image_size, steps)
        ran = st.session_state.get("lr_find_for") == setup
        if not (st.button("Run the learning-rate finder", key="lr_find_run") or ran):
            st.caption("About a hundred small training steps with a rising learning rate; the loss curve shows where "
                       "training is fastest before it diverges.")
            return None
        st.session_state.lr_find_for = setup
        try:
            result = _sweep(*setup)
        except (ValueError, RuntimeError) as e:
            st.error(str(e))
            return None
        fig = px.line(x=result.lrs, y=result.losses, log_x=True, labels={"x": "learning rate", "y": "loss (smoothed)"},
                      title=f"Loss against learning rate ({backbone}, {strategy})")
        fig.add_vline(x=result.suggestion, line_dash="dash", annotation_text=f"suggested {result.suggestion:.1e}")
        st.plotly_chart(fig, key="lr_find_chart")
        lr = float(f"{result.suggestion:.2g}")
        if math.isfinite(lr):
            st.button(f"Use learning rate {lr:.1e}", key="lr_find_use", on_click=_use, args=(lr_key, lr))
        return result.suggestion
