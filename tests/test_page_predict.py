"""The Predict page through AppTest: Grad-CAM, "unsure", the batch table and the evaluation gallery."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from tl_core.config import TrainConfig
from tl_core.train.trainer import train
from tl_core.use.predict import UNSURE


def test_predict_page_grad_cam_unsure_and_batch_table(ui, monkeypatch):  # noqa: F811
    from helpers import open_page, st_home

    home = Path(st_home())
    train("demo", TrainConfig(backbone="mobilenet_v3_small", pretrained=False, strategy="full", epochs=1, batch_size=16,
                              image_size=48, patience=0), os.environ["TL_STUDIO_RUNS"])
    demo = (home / "demo-v1").resolve()  # a link to the shared demo images: the data root must hold the real folder
    monkeypatch.setenv("TL_STUDIO_DATA_ROOT", str(demo.parent))
    at = open_page("app_pages/4_Predict.py")
    star = sorted((home / "demo-v1" / "val" / "star").iterdir())[0]
    at.file_uploader(key="predict_upload").set_value([(star.name, star.read_bytes(), "image/png")]).run()
    assert not at.exception, at.exception
    captions = [c for i in at.image for c in i.captions]
    assert star.name in captions and any(c.startswith("Grad-CAM: evidence for") for c in captions)
    answer = next(m.value for m in at.markdown if m.value.startswith("**"))
    assert re.search(r"\(\d+\.\d%\)", answer)
    bars = at.get("plotly_chart")[0].proto.spec
    assert all(re.fullmatch(r"\d+\.\d%", t) for t in json.loads(bars)["data"][0]["text"])  # every bar labelled

    at.radio(key="batch_kind").set_value("Folder on the server").run()
    at.text_input(key="batch_folder").set_value(f"{demo.name}/val/star").run()
    at.button(key="batch_run").click().run()
    table = [d.value for d in at.dataframe if "answer" in d.value.columns][-1]  # the batch tab's, after the upload's
    assert len(table) == 16 and {"file", "answer", "confidence", "top1", "top1_probability"} <= set(table.columns)
    assert (table.top1_probability >= table.top3_probability).all()
    next(s for s in at.slider if s.label.startswith("Answer")).set_value(1.0).run()  # nothing is that sure: every answer becomes "unsure"
    table = [d.value for d in at.dataframe if "answer" in d.value.columns][-1]
    assert set(table.answer) == {UNSURE}
    assert any(b.proto.label == "Download results (CSV)" for b in at.get("download_button"))

    at.button(key="eval_btn").click().run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert re.fullmatch(r"\d+\.\d%", metrics["Calibration error (ECE)"])
    mistakes = [c for i in at.image for c in i.captions if " -> " in c]
    assert mistakes and any("Grad-CAM" in c.value for c in at.caption)  # the gallery shows overlays


def test_predict_page_batch_lists_skipped_files_by_name(ui, monkeypatch, tmp_path):
    """A zip with an unreadable picture, a text file and macOS litter: the table names each one inside the zip and
    says why; no server path (the folder it was unpacked into) appears anywhere."""
    import io
    import zipfile

    from helpers import fake_run, open_page, png_bytes

    fake_run(Path(os.environ["TL_STUDIO_RUNS"]), ["a", "b"])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("photos/ok.png", png_bytes(size=(40, 40)))
        zf.writestr("photos/broken.jpg", b"not a jpeg")
        zf.writestr("photos/notes.txt", "hi")
        zf.writestr("__MACOSX/photos/._ok.png", b"\0")
    at = open_page("app_pages/4_Predict.py")
    at.file_uploader(key="batch_zip").set_value([("mine.zip", buf.getvalue(), "application/zip")]).run()
    at.button(key="batch_run").click().run()
    assert not at.exception, at.exception
    table = next(d.value for d in at.dataframe if "answer" in d.value.columns)
    assert list(table.file) == ["mine.zip/photos/broken.jpg", "mine.zip/photos/ok.png"]
    skipped = next(d.value for d in at.dataframe if list(d.value.columns) == ["file", "reason"])
    reasons = dict(zip(skipped.file, skipped.reason))
    assert set(reasons) == {"mine.zip/__MACOSX", "mine.zip/photos/notes.txt", "mine.zip/photos/broken.jpg"}
    assert reasons["mine.zip/photos/notes.txt"] == "not an image file (.txt)" and reasons["mine.zip/__MACOSX"] == "hidden or system file"
    assert any("1 file classified" in c.value and "3 files skipped" in c.value for c in at.caption)
    shown = [str(v) for d in at.dataframe for v in d.value.to_numpy().ravel()] + [c.value for c in at.caption]
    assert not any(os.environ["TL_STUDIO_HOME"] in v or "predict-uploads" in v for v in shown)
