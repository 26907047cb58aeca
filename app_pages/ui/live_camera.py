"""Live classification of the webcam: a small component streams frames (one in flight at a time, so the frame
rate is what this machine holds) and shows the top-k, the unsure answer and the frame rate over the video.

The component is one static HTML file speaking Streamlit's component messages directly, with nothing to build or
download; it runs inside a fragment so each frame reruns only this view, not the page.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
from pathlib import Path

import streamlit as st
import streamlit.components.v1 as components

from tl_core.data.images import BadImage, open_rgb
from tl_core.use.predict import UNSURE, Predictor

_component = components.declare_component("tl_live_camera", path=str(Path(__file__).with_name("live_camera")))
MAX_FRAME_BYTES = 2_000_000  # a 256 px JPEG is ~30 kB; anything far larger is not a frame of ours


def classify_frame(model: Predictor, frame: dict, top_k: int, threshold: float) -> dict:
    """The answer for one frame sent by the component: {seq, answer, top, server_ms} (answer says why on failure)."""
    start = time.perf_counter()
    seq = frame.get("seq") if isinstance(frame.get("seq"), int) else -1
    data = str(frame.get("jpeg", "")).partition(",")[2]
    try:
        if len(data) > MAX_FRAME_BYTES * 4 // 3:
            raise BadImage("frame too large")
        p = model.predict([open_rgb(io.BytesIO(base64.b64decode(data, validate=True)))], top_k)[0]
    except (BadImage, binascii.Error, ValueError) as e:
        return {"seq": seq, "answer": f"unreadable frame ({e})", "top": [], "server_ms": 0}
    answer = p.answer(threshold)
    return {"seq": seq, "answer": "Unsure / none of these" if answer == UNSURE else answer, "top": p.top,
            "server_ms": round((time.perf_counter() - start) * 1e3)}


@st.fragment
def live_view(model: Predictor, top_k: int, threshold: float, key: str = "live_camera") -> None:
    frame = st.session_state.get(key)
    result = st.session_state.get(f"{key}_result")
    if isinstance(frame, dict) and (result is None or result["seq"] != frame.get("seq")):
        result = classify_frame(model, frame, top_k, threshold)
        st.session_state[f"{key}_result"] = result
    _component(result=result, key=key, default=None)
