"""Predictions: files, PIL images and uploads with their top k, batch predictions to CSV, consistent evaluation."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import pytest
from helpers import bees_val_files, cli_out, png_bytes
from PIL import Image

from tl_core.data.scan import load_dataset
from tl_core.use.predict import Predictor, evaluate


def test_predict_files_pil_and_uploads_top_k(demo_run, tmp_path):
    ds = load_dataset("demo")
    stars = [s.path for s in ds.split("val") if ds.classes[s.label] == "star"][:4]
    p = Predictor.from_run(demo_run.run_dir)
    buf = io.BytesIO()
    Image.open(stars[0]).save(buf, "PNG")
    buf.seek(0)
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    preds = p.predict([*stars, Image.open(stars[1]), buf, str(bad)], top_k=3)
    assert len(preds) == 7 and preds[-1].error and not preds[-1].top
    for pr in preds[:-1]:
        probs = [v for _, v in pr.top]
        assert len(pr.top) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0001
    assert sum(pr.top[0][0] == "star" for pr in preds[:4]) >= 3


def test_evaluate_reports_consistent_figures(demo_run):
    ev = evaluate(demo_run.run_dir)
    n = sum(map(sum, ev.confusion_matrix))
    assert n == len(ev.predictions) == 80
    assert ev.accuracy == pytest.approx(sum(ev.confusion_matrix[i][i] for i in range(5)) / n)
    assert ev.accuracy == pytest.approx(demo_run.best_val_accuracy, abs=0.05)
    assert [c["class"] for c in ev.per_class] == ev.classes and all(0 <= c["f1"] <= 1 for c in ev.per_class)
    conf = [m["confidence"] for m in ev.mistakes]
    assert conf == sorted(conf, reverse=True) and all(m["true"] != m["predicted"] for m in ev.mistakes)
    if ev.mistakes:
        m = ev.mistakes[0]
        assert m in ev.cell(m["true"], m["predicted"])


def test_batch_predict_of_a_zip_writes_a_csv(bees_run, tmp_path, capsys):
    files = bees_val_files(6)
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in files:
            zf.write(f, f"photos/{Path(f).name}")
        zf.writestr("photos/broken.jpg", b"not a jpeg")
        zf.writestr("photos/.DS_Store", b"\0")
    out = tmp_path / "predictions.csv"
    cli_out(capsys, "predict", str(bees_run), str(archive), "--top-k", "2", "--csv", str(out))
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 7 and {"file", "answer", "confidence", "top1", "top1_probability", "top2", "error"} <= set(rows[0])
    good = [r for r in rows if not r["error"]]
    assert len(good) == 6 and [r for r in rows if r["error"]][0]["file"].endswith("broken.jpg")
    expected = [Path(f).parent.name for f in files]
    got = {Path(r["file"]).name: r["top1"] for r in good}
    assert sum(got[Path(f).name] == c for f, c in zip(files, expected)) >= 5
    assert all(float(r["top1_probability"]) >= float(r["top2_probability"]) for r in good)


def test_folder_inputs_leave_out_links_that_lead_outside(tmp_path):
    from conftest import solid

    from tl_core.use.predict import expand_inputs

    folder = tmp_path / "mine"
    inside = solid(folder / "a.png", (1, 2, 3))
    solid(tmp_path / "secret" / "s.png", (4, 5, 6))
    (folder / "link.png").symlink_to(tmp_path / "secret" / "s.png")
    (folder / "ok.png").symlink_to(inside)  # a link within the folder is fine
    assert expand_inputs([str(folder)]) == [str(inside), str(folder / "ok.png")]


def test_an_uploaded_zip_is_unpacked_under_generated_names_and_reruns_leave_nothing_new(tmp_path, monkeypatch):
    import zipfile

    from tl_core.use.predict import expand_inputs, unpack_upload

    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "home"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x/1.png", png_bytes())
    for _ in range(3):  # three reruns of the page with the zip selected
        found = expand_inputs([str(unpack_upload(buf.getvalue()))])
    uploads = tmp_path / "home" / "predict-uploads"
    assert [p.name for p in uploads.iterdir()] == [Path(found[0]).parents[1].name]  # one unpacked folder, no zip copies
    assert [Path(f).name for f in found] == ["1.png"]
