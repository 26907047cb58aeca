"""Predictions: files, PIL images and uploads with their top k, batch predictions to CSV, consistent evaluation."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import torch
from helpers import bees_val_files, cli_out, png_bytes
from PIL import Image, ImageDraw

from tl_core.cli.main import main
from tl_core.data.pipeline import decode_square
from tl_core.data.scan import load_dataset
from tl_core.models.backbones import Preprocessing
from tl_core.train.runs import CHECKED, history_rows, load_run
from tl_core.use import calibration, familiarity
from tl_core.use.export import export, load_export
from tl_core.use.predict import NONE_OF_THESE, UNSURE, Predictor, evaluate


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
    printed = cli_out(capsys, "predict", str(bees_run), str(archive), "--top-k", "2", "--csv", str(out))
    rows = list(csv.DictReader(out.open()))
    assert all(r["file"].startswith("batch.zip/photos/") for r in rows)  # member names, not the unpacked temp folder
    answered, _, skipped = printed.partition("skipped, not classified (2 files):")
    assert all(line.startswith("batch.zip/photos/") for line in answered.splitlines() if line.strip())
    assert skipped.split("\n")[1:3] == ["  batch.zip/photos/.DS_Store: hidden or system file",
                                        f"  batch.zip/photos/broken.jpg: {rows[-1]['error']}"]
    assert len(rows) == 7 and {"file", "answer", "confidence", "top1", "top1_probability", "top2", "error"} <= set(rows[0])
    good = [r for r in rows if not r["error"]]
    assert len(good) == 6 and [r for r in rows if r["error"]][0]["file"].endswith("broken.jpg")
    expected = [Path(f).parent.name for f in files]
    got = {Path(r["file"]).name: r["top1"] for r in good}
    assert sum(got[Path(f).name] == c for f, c in zip(files, expected)) >= 5
    assert all(float(r["top1_probability"]) >= float(r["top2_probability"]) for r in good)


def test_folder_inputs_leave_out_links_that_lead_outside(tmp_path):
    from helpers import solid

    from tl_core.use.predict import Skipped, expand_inputs, gather_inputs

    folder = tmp_path / "mine"
    inside = solid(folder / "a.png", (1, 2, 3))
    solid(tmp_path / "secret" / "s.png", (4, 5, 6))
    (folder / "link.png").symlink_to(tmp_path / "secret" / "s.png")
    (folder / "ok.png").symlink_to(inside)  # a link within the folder is fine
    assert expand_inputs([str(folder)]) == [str(inside), str(folder / "ok.png")]
    assert gather_inputs([str(folder)]).skipped == [Skipped(f"{folder}/link.png", "a link leading out of the folder; not read")]


def test_batch_inputs_name_every_file_left_out_and_why(tmp_path, monkeypatch):
    """Not an image, hidden and system files (a hidden folder once), links out, a zip's unpacked-without members:
    each by its name inside the folder or zip, never the server folder a zip was unpacked into."""
    from helpers import solid

    from tl_core.use.predict import Skipped, gather_inputs

    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "home"))
    folder = tmp_path / "mine"
    solid(folder / "a.png", (1, 2, 3))
    (folder / "notes.txt").write_text("hi")
    (folder / "README").write_text("hi")
    (folder / ".git" / "objects").mkdir(parents=True)
    (folder / ".git" / "objects" / "x.png").write_bytes(png_bytes())
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("in/b.png", png_bytes())
        zf.writestr("in/.DS_Store", b"\0")
        zf.writestr("__MACOSX/in/._b.png", b"\0")
        zf.writestr("in/labels.csv", "b.png,x")
    found = gather_inputs([str(folder), str(archive)])
    assert [shown for _, shown in found.images] == [f"{folder}/a.png", "photos.zip/in/b.png"]
    assert sorted(found.skipped, key=lambda s: s.file) == sorted([
        Skipped(f"{folder}/.git", "hidden or system file"), Skipped(f"{folder}/README", "not an image file (no extension)"),
        Skipped(f"{folder}/notes.txt", "not an image file (.txt)"), Skipped("photos.zip/in/.DS_Store", "hidden or system file"),
        Skipped("photos.zip/__MACOSX", "hidden or system file"), Skipped("photos.zip/in/labels.csv", "not an image file (.csv)")],
        key=lambda s: s.file)
    assert gather_inputs([str(archive)]).skipped == found.skipped[-3:]  # the unpacked folder is reused, the list kept


def test_cli_predict_lists_skipped_files_in_text_and_json(tmp_path, capsys):
    from helpers import fake_run, run_cli, solid

    run = fake_run(tmp_path / "runs", ["a", "b"])
    folder = tmp_path / "batch"
    solid(folder / "one.png", (200, 10, 10), (40, 40))
    (folder / "two.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("hi")
    code, out, _ = run_cli(capsys, "predict", str(run), str(folder), "--json")
    result = json.loads(out)
    assert code == 0 and [p["file"] for p in result["predictions"]] == [f"{folder}/one.png"]
    skipped = {s["file"]: s["reason"] for s in result["skipped"]}
    assert set(skipped) == {f"{folder}/notes.txt", f"{folder}/two.jpg"} and skipped[f"{folder}/notes.txt"] == "not an image file (.txt)"
    assert skipped[f"{folder}/two.jpg"]  # the decoder's reason, in words
    code, out, _ = run_cli(capsys, "predict", str(run), str(folder))
    assert code == 0 and out.splitlines()[0].startswith(f"{folder}/one.png: ")
    assert "skipped, not classified (2 files):" in out and f"  {folder}/notes.txt: not an image file (.txt)" in out
    empty = tmp_path / "empty"
    (empty / "only.txt").parent.mkdir()
    (empty / "only.txt").write_text("x")
    code, _, err = run_cli(capsys, "predict", str(run), str(empty))
    assert code == 1 and err.count("\n") == 1 and f"skipped {empty}/only.txt: not an image file (.txt)" in err


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


def neither_class(folder: Path) -> list[Path]:
    """Plain blue, plain white, random noise, a drawn face and an unrelated generated picture (a demo star)."""
    from tl_core.data.demo import draw

    folder.mkdir(parents=True, exist_ok=True)
    face = Image.new("RGB", (240, 240), (250, 225, 170))
    d = ImageDraw.Draw(face)
    d.ellipse((30, 30, 210, 210), fill=(245, 200, 140), outline="black", width=5)
    d.ellipse((80, 90, 100, 110), fill="black")
    d.ellipse((140, 90, 160, 110), fill="black")
    d.arc((75, 110, 165, 175), 20, 160, fill="black", width=5)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 240, 3), dtype=np.uint8))
    pictures = {"blue": Image.new("RGB", (240, 180), (0, 0, 255)), "white": Image.new("RGB", (240, 180), "white"),
                "noise": noise, "face": face, "star": draw("star", np.random.default_rng(1), 128).convert("RGB")}
    for name, im in pictures.items():
        im.save(folder / f"{name}.png")
    return [folder / f"{name}.png" for name in pictures]


def val_pictures(run_dir: Path) -> tuple[list[str], list[str]]:
    run = load_run(run_dir)
    items = run.split("val")
    return [p for p, _ in items], [run.classes[y] for _, y in items]


def test_pictures_of_neither_class_are_answered_unsure(bees_features_run, tmp_path, capsys):
    files = neither_class(tmp_path / "neither")
    out = tmp_path / "answers.csv"
    assert main(["predict", str(bees_features_run), *map(str, files), "--json", "--csv", str(out)]) == 0
    answers = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["predictions"]
    unsure = [a["file"] for a in answers if a["answer"] == UNSURE and a["reason"].startswith(NONE_OF_THESE)]
    assert len(unsure) >= 4, answers
    rows = {r["file"]: r for r in csv.DictReader(out.open())}
    assert all(rows[f]["answer"] == UNSURE and rows[f]["why_unsure"].startswith(NONE_OF_THESE) for f in unsure)

    predictor = Predictor.from_run(bees_features_run)
    files, truth = val_pictures(bees_features_run)
    preds = predictor.predict_many(files, top_k=1)
    assert np.mean([not p.unfamiliar for p in preds]) >= 0.9  # validation pictures keep their class
    answered = [p.answer(predictor.threshold) for p in preds]
    assert np.mean([a == t for a, t in zip(answered, truth)]) >= 0.8  # and most are answered, and rightly


def test_the_familiarity_check_uses_the_runs_own_features_and_is_kept_beside_it(bees_features_run):
    predictor = Predictor.from_run(bees_features_run)
    fam = predictor.familiarity
    saved = familiarity.load(bees_features_run / familiarity.FILE, (bees_features_run / "best.safetensors").stat().st_mtime)
    assert saved is not None and saved.threshold == fam.threshold and len(fam.reference) == len(load_run(bees_features_run).split("train"))
    first = load_run(bees_features_run).split("train")[0][0]
    u8 = torch.from_numpy(decode_square(first, predictor.prep)[None]).permute(0, 3, 1, 2)
    _, features = predictor.outputs(u8)
    assert features.shape == (1, 1280)  # MobileNetV2's penultimate layer: the head's input
    nearest = (torch.nn.functional.normalize(features, dim=1) @ fam.reference.T).max()
    assert float(nearest) > 0.99  # a training picture is its own nearest neighbour: same weights, same features


def test_export_carries_the_familiarity_check(bees_features_run, tmp_path):
    path = export(bees_features_run, tmp_path / "model.zip")
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("model.json"))
        readme = zf.read("MODEL_CARD.md").decode()
    threshold = Predictor.from_run(bees_features_run).familiarity.threshold
    assert meta["familiarity"]["unsure_beyond"] == threshold and meta["familiarity"]["file"] in zipfile.ZipFile(path).namelist()
    assert "none of the classes" in readme
    blue, *_ = neither_class(tmp_path / "neither")
    files = [str(blue), *val_pictures(bees_features_run)[0][::15]]
    here = Predictor.from_run(bees_features_run).predict(files)
    there = load_export(path).predict(files)
    assert there[0].unfamiliar and sum(not p.unfamiliar for p in there[1:]) >= 0.8 * (len(files) - 1)
    assert [p.unfamiliar for p in there] == [p.unfamiliar for p in here]


def test_the_run_picker_runs_and_evaluate_show_one_labelled_accuracy(bees_features_run, capsys):
    run = load_run(bees_features_run)
    (run.dir / CHECKED).unlink(missing_ok=True)
    before = run.accuracy()
    assert not before.checked and before.value == run.summary["best_val_accuracy"]
    assert "on val, best checkpoint (epoch 1), measured while training" in before.label()

    assert main(["evaluate", str(run.dir)]) == 0
    printed = capsys.readouterr().out
    ev = evaluate(run)
    after = run.accuracy()
    assert after.checked and after.value == ev.accuracy and after.label() == ev.accuracy_label
    assert f"accuracy: {after.label()}" in printed
    assert main(["runs", "--runs-dir", str(run.dir.parent), "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["id"] == run.id)
    assert row["best_val_accuracy"] == ev.accuracy and row["accuracy"] == after.label() and row["accuracy_checked"]
    assert history_rows([run])[0]["best val acc"] == ev.accuracy


def test_predict_page_says_unsure_for_none_of_the_classes_and_how_confidences_were_treated(
        ui, bees_features_run, monkeypatch, tmp_path):  # noqa: F811
    from helpers import open_page

    monkeypatch.setenv("TL_STUDIO_RUNS", str(bees_features_run.parent))
    run = load_run(bees_features_run)
    cal = Predictor.from_run(run).calibration
    at = open_page("app_pages/4_Predict.py")
    assert not at.exception, at.exception
    assert run.accuracy().label() in at.selectbox(key="predict_run").options[0]
    assert cal.sentence() in [c.value for c in at.caption]
    blue, white, *_ = neither_class(tmp_path / "neither")
    files, truth = val_pictures(bees_features_run)
    predictor = Predictor.from_run(run)
    ant = next(f for f, t in zip(files, truth) if t == "ants" and predictor.predict([f])[0].answer(predictor.threshold) == "ants")
    at.toggle(key="show_cam").set_value(False).run()
    at.file_uploader(key="predict_upload").set_value(
        [(p.name, Path(p).read_bytes(), "image/png") for p in (blue, white, Path(ant))]).run()
    assert not at.exception, at.exception
    answers = [m.value for m in at.markdown if m.value.startswith("**")]
    assert answers[0].startswith("**Unsure — looks like none of the classes**")
    assert answers[1].startswith("**Unsure — looks like none of the classes**")
    assert answers[2].startswith("**ants**")

    kept = calibration.calibrate(*calibration_not_helped(), cal.checkpoint)  # a record where scaling did not help
    assert not kept.applied
    calibration.save(run.dir, kept)
    try:
        st.cache_resource.clear()  # the page keeps the loaded model (with its calibration) per checkpoint
        at = open_page("app_pages/4_Predict.py")
        captions = [c.value for c in at.caption]
        assert kept.sentence() in captions and not any(c.startswith("Confidences are calibrated") for c in captions)
    finally:
        calibration.save(run.dir, cal)


def calibration_not_helped():
    """Validation logits that are calibrated already: temperature scaling does not lower their held-out error."""
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn(60, 2, generator=g) * 3
        labels = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
        if not calibration.calibrate(logits, labels).applied:
            return logits, labels
    raise AssertionError("no calibrated sample found")


def test_a_fine_tuned_run_tells_pictures_of_neither_class_by_its_own_features(bees_run, tmp_path):
    from tl_core.data.pipeline import decode_square
    from tl_core.train.runs import load_run

    predictor = Predictor.from_run(bees_run)
    preds = predictor.predict(neither_class(tmp_path), top_k=1)
    assert sum(p.answer(predictor.threshold) == UNSURE and p.unfamiliar for p in preds) >= 4
    first = load_run(bees_run).split("train")[0][0]
    _, features = predictor.outputs(torch.from_numpy(decode_square(first, predictor.prep)[None]).permute(0, 3, 1, 2))
    reference = predictor.familiarity.reference[0]  # made with the fine-tuned weights, not the ImageNet ones
    assert float(torch.nn.functional.normalize(features, dim=1)[0] @ reference) > 0.99



def test_predict_on_a_letterbox_run_sees_the_whole_picture(letterbox_run):
    """The run's own fit, from run.json: its pictures' class sits at their edges, which the letterbox keeps.
    The same network fed centre crops of the same pictures sees only the grey middle and is near chance."""
    run = load_run(letterbox_run)
    assert run.info["preprocessing"]["fit"] == "letterbox"
    predictor = Predictor.from_run(letterbox_run, "cpu")
    assert predictor.prep.fit == "letterbox" and predictor.prep == Preprocessing.from_dict(run.info["preprocessing"])
    items = run.split("val")
    truth = [run.classes[label] for _, label in items]

    def accuracy(p: Predictor) -> float:
        return float(np.mean([x.top[0][0] == t for x, t in zip(p.predict([path for path, _ in items], 1), truth)]))

    cropping = Predictor(predictor.model, run.classes, replace(predictor.prep, resize=110, fit="crop"), predictor.device)
    assert accuracy(predictor) >= 0.95 and accuracy(cropping) <= 0.75
    assert evaluate(run, "val", "cpu").accuracy == pytest.approx(accuracy(predictor))  # evaluate decodes the same way
