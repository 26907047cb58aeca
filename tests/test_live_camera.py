"""The live camera view's frame handling (the browser side: tests/test_browser_predict.py, with a fake webcam)."""

import base64
import io

import numpy as np
import torch
from PIL import Image

from app_pages.ui.live_camera import classify_frame
from tl_core.models import backbones
from tl_core.models.backbones import Preprocessing
from tl_core.use.predict import Predictor


def tiny_predictor() -> Predictor:
    torch.manual_seed(0)
    model = backbones.bare("mobilenet_v3_small")
    backbones.replace_head(model, 3)
    return Predictor(model, ["a", "b", "c"], Preprocessing.imagenet(64), torch.device("cpu"))


def jpeg_url(size=(80, 60)) -> str:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(out, "JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def test_a_frame_gets_the_top_k_and_the_unsure_answer():
    model = tiny_predictor()
    result = classify_frame(model, {"seq": 7, "jpeg": jpeg_url()}, 2, threshold=1.0)
    assert result["seq"] == 7 and result["answer"] == "Unsure / none of these" and len(result["top"]) == 2
    assert result["top"][0][0] in {"a", "b", "c"} and result["top"][0][1] >= result["top"][1][1]
    assert classify_frame(model, {"seq": 8, "jpeg": jpeg_url()}, 1, threshold=0.0)["answer"] in {"a", "b", "c"}


def test_a_hostile_frame_gets_a_reason_not_an_exception():
    model = tiny_predictor()
    text = "data:x;base64," + base64.b64encode(b"text").decode()
    for frame in ({"seq": 1, "jpeg": "data:image/jpeg;base64,!!!"}, {"seq": 2, "jpeg": text}, {"seq": "x"},
                  {"seq": 3, "jpeg": "data:," + "A" * 3_000_000}):
        result = classify_frame(model, frame, 3, 0.5)
        assert result["answer"].startswith("unreadable frame") and result["top"] == []
