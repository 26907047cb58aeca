"""Using a trained model (issue 12): Grad-CAM, calibration and "unsure", batch predict, checked exports, lr finder.

Most tests share one short frozen-backbone run on ants vs bees with the real MobileNetV2 weights (skipped
cleanly without ../shared/data).
"""

import csv
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HYMENOPTERA
from PIL import Image
from test_app import ui  # noqa: F401,F811  (fixture: fresh runs folder and home)

from tl_core.cli.main import main
from tl_core.config import TrainConfig
from tl_core.train.trainer import train
from tl_core.use import calibration
from tl_core.use.explain import explain
from tl_core.use.export import ExportError, export, load_check, run_file
from tl_core.use.predict import UNSURE, Predictor


@pytest.fixture(scope="module")
def bees_run(tmp_path_factory, real_weights):
    if not HYMENOPTERA.exists():
        pytest.skip("../shared/data is absent: no ants vs bees photos here")
    old = os.environ["TORCH_HOME"]
    os.environ["TORCH_HOME"] = str(real_weights)
    try:
        # a fine-tuned network (label smoothing leaves it under-confident): what calibration is for; the fitted
        # feature head is a logistic regression, calibrated already
        config = TrainConfig(strategy="full", epochs=2, image_size=128, seed=0)
        result = train(str(HYMENOPTERA), config, tmp_path_factory.mktemp("runs"))
    finally:
        os.environ["TORCH_HOME"] = old
    assert result.best_val_accuracy > 0.8
    return Path(result.run_dir)


def val_files(n: int) -> list[str]:
    files = sorted((HYMENOPTERA / "val" / "ants").iterdir())[: n // 2] + sorted((HYMENOPTERA / "val" / "bees").iterdir())[: n - n // 2]
    return [str(f) for f in files]


def run_cli(capsys, *args: str) -> str:
    code = main(list(args))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


# ---------------------------------------------------------------- calibration and "unsure"


def test_temperature_scaling_lowers_ece_on_ants_vs_bees(bees_run, capsys):
    report = json.loads(run_cli(capsys, "evaluate", str(bees_run), "--json").strip().splitlines()[-1])
    assert report["ece_calibrated"] < report["ece"]
    assert report["temperature"] != 1.0 and 0.5 <= report["threshold"] < 1
    saved = calibration.load(bees_run, (bees_run / "best.safetensors").stat().st_mtime)
    assert saved is not None and saved.temperature == report["temperature"]  # the Predict page uses the same T
    assert Predictor.from_run(bees_run).temperature == report["temperature"]


def test_ece_of_known_cases():
    labels = torch.tensor([0, 0, 1, 1])
    right = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert calibration.ece(right, labels) == pytest.approx(0.0)
    overconfident = torch.tensor([[0.9, 0.1]] * 4)  # 90% sure, right half the time
    assert calibration.ece(overconfident, labels) == pytest.approx(0.4)
    logits = torch.tensor([[4.0, 0.0], [4.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    assert calibration.fit_temperature(logits, torch.tensor([0, 0, 1, 1])) > 1  # 3 of 4 right: soften


def out_of_class_images() -> list[Image.Image]:
    from tl_core.data.demo import demo_root

    rng = np.random.default_rng(0)
    shapes = [Image.open(p) for p in sorted(demo_root().glob("val/*/*.png"))[::16][:5]]
    colours = [Image.new("RGB", (160, 120), c) for c in [(255, 0, 0), (0, 160, 0), (0, 0, 255), (128, 128, 128), (255, 255, 255)]]
    noise = [Image.fromarray((rng.random((160, 160, 3)) * 255).astype(np.uint8)) for _ in range(5)]
    return shapes + colours + noise


def test_out_of_class_images_get_lower_calibrated_confidence(bees_run):
    predictor = Predictor.from_run(bees_run)
    val = [p.top[0][1] for p in predictor.predict(val_files(30), top_k=1)]
    ood = predictor.predict(out_of_class_images(), top_k=1)
    assert np.mean([p.top[0][1] for p in ood]) < np.mean(val) - 0.1
    assert sum(p.answer(predictor.threshold) == UNSURE for p in ood) > len(ood) / 2  # most say "none of these"


# ---------------------------------------------------------------- Grad-CAM


def test_grad_cam_map_shape_range_and_class_dependence(bees_run, tmp_path, capsys):
    predictor = Predictor.from_run(bees_run)
    image = val_files(2)[1]  # a bee
    ants, bees = explain(predictor, image, "ants"), explain(predictor, image, "bees")
    crop = predictor.prep.crop
    for e in (ants, bees):
        assert e.heatmap.shape == (crop, crop) and e.image.shape == (crop, crop, 3) and np.isfinite(e.heatmap).all()
        assert e.heatmap.min() >= 0 and e.heatmap.max() <= 1
    predicted = explain(predictor, image)
    assert predicted.class_name == predictor.predict([image])[0].top[0][0]
    assert predicted.heatmap.max() == pytest.approx(1.0)  # scaled to its strongest evidence
    assert np.abs(ants.heatmap - bees.heatmap).mean() > 0.05  # evidence for each class lies in different places
    out = tmp_path / "heat.png"
    printed = run_cli(capsys, "explain", str(bees_run), image, "--out", str(out), "--json")
    assert json.loads(printed)["class"] in ("ants", "bees")
    assert Image.open(out).size == (crop, crop)


def test_grad_cam_runs_for_a_vision_transformer():
    from torchvision.models.vision_transformer import VisionTransformer

    from tl_core.models.backbones import Preprocessing
    from tl_core.models.cam_targets import TARGETS, cam_target

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3)
    torch.nn.init.normal_(vit.heads.head.weight)  # torchvision starts the head at zero: no gradient at all
    predictor = Predictor(vit, ["a", "b", "c"], Preprocessing.imagenet(32), torch.device("cpu"))
    image = Image.fromarray((np.random.default_rng(1).random((40, 50, 3)) * 255).astype(np.uint8))
    maps = [explain(predictor, image, c, TARGETS["vision_transformer"]).heatmap for c in ("a", "b")]
    assert all(m.shape == (32, 32) and m.min() >= 0 and m.max() == pytest.approx(1.0) for m in maps)
    assert not np.allclose(maps[0], maps[1])
    assert cam_target("vit_b_16") is TARGETS["vision_transformer"] and cam_target("swin_t").reshape is not None


def test_every_backbone_family_has_a_grad_cam_layer():
    from tl_core.models.backbones import list_backbones
    from tl_core.models.cam_targets import TARGETS, family_of

    assert {family_of(b.name) for b in list_backbones()} <= set(TARGETS)


SMALLEST_PER_FAMILY = ["alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "googlenet", "inception_v3", "maxvit_t",
                       "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_y_400mf", "resnet18",
                       "shufflenet_v2_x0_5", "squeezenet1_1", "swin_t", "vgg11", "vit_b_16"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALLEST_PER_FAMILY)
def test_grad_cam_runs_for_each_family(name):
    from tl_core.models import backbones
    from tl_core.models.backbones import preprocessing_of, replace_head

    model = backbones.bare(name)
    backbones._drop_aux(model)
    replace_head(model, 2)
    prep = preprocessing_of(backbones.pick_weights(name))
    predictor = Predictor(model, ["a", "b"], prep, torch.device("cpu"), name)
    image = Image.fromarray((np.random.default_rng(2).random((300, 260, 3)) * 255).astype(np.uint8))
    e = explain(predictor, image)
    assert e.heatmap.shape == (prep.crop, prep.crop) and np.isfinite(e.heatmap).all()
    assert 0 <= e.heatmap.min() and e.heatmap.max() <= 1


# ---------------------------------------------------------------- batch predict


def test_batch_predict_of_a_zip_writes_a_csv(bees_run, tmp_path, capsys):
    files = val_files(6)
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in files:
            zf.write(f, f"photos/{Path(f).name}")
        zf.writestr("photos/broken.jpg", b"not a jpeg")
        zf.writestr("photos/.DS_Store", b"\0")
    out = tmp_path / "predictions.csv"
    printed = run_cli(capsys, "predict", str(bees_run), str(archive), "--top-k", "2", "--csv", str(out))
    rows = list(csv.DictReader(out.open()))
    assert all(r["file"].startswith("batch.zip/photos/") for r in rows)  # member names, not the unpacked temp folder
    assert all(line.startswith("batch.zip/photos/") for line in printed.splitlines() if line.strip())
    assert len(rows) == 7 and {"file", "answer", "confidence", "top1", "top1_probability", "top2", "error"} <= set(rows[0])
    good = [r for r in rows if not r["error"]]
    assert len(good) == 6 and [r for r in rows if r["error"]][0]["file"].endswith("broken.jpg")
    expected = [Path(f).parent.name for f in files]
    got = {Path(r["file"]).name: r["top1"] for r in good}
    assert sum(got[Path(f).name] == c for f, c in zip(files, expected)) >= 5
    assert all(float(r["top1_probability"]) >= float(r["top2_probability"]) for r in good)


# ---------------------------------------------------------------- export


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_runs_outside_tl_studio_with_the_same_probabilities(bees_run, tmp_path, fmt):
    path = export(bees_run, tmp_path / "model.zip", fmt)
    check = load_check(path)
    assert check["images"] == 16 and check["max_abs_diff"] <= 1e-3
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        meta = json.loads(zf.read("model.json"))
        readme = zf.read("README.md").decode()
        zf.extractall(tmp_path / "unpacked")
    assert names == {meta["file"], "model.json", "README.md"} and meta["classes"] == ["ants", "bees"]
    # the file alone, on other images, against TL Studio's own predictions
    files = val_files(8)
    predictor = Predictor.from_run(bees_run, "cpu")
    predictor.dtype = None
    from tl_core.data.pipeline import decode_square

    u8 = torch.from_numpy(np.stack([decode_square(f, predictor.prep.resize) for f in files])).permute(0, 3, 1, 2)
    got = run_file(tmp_path / "unpacked" / meta["file"], fmt, predictor.batcher.eval(u8).float().contiguous().numpy(), meta)
    assert np.abs(got - predictor.probabilities(u8).numpy()).max() <= 1e-3
    # the README's loading example, run as written (ten lines)
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) <= 11
    photo = tmp_path / "photo.png"  # lossless: TL Studio decodes JPEGs at reduced scale (draft), plain Pillow does not
    Image.open(files[0]).save(photo)
    code = code.replace('"model.zip"', repr(str(path))).replace('"photo.jpg"', repr(str(photo)))
    scope: dict = {}
    exec(compile(code, "README", "exec"), scope)
    best, probability = predictor.predict([photo], 1)[0].top[0]
    assert meta["classes"][int(scope["probs"].argmax())] == best and abs(float(scope["probs"].max()) - probability) < 0.02


def test_failed_export_leaves_nothing_and_a_folder_gets_one_message(bees_run, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "existing"
    folder.mkdir()
    with pytest.raises(ExportError, match="is a folder"):
        export(bees_run, folder)
    assert main(["export", str(bees_run), str(folder)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a folder" in err[0]
    monkeypatch.setattr("tl_core.use.export.TOLERANCE", -1.0)  # any difference at all now fails the check
    dest = tmp_path / "model.zip"
    with pytest.raises(ExportError, match="predicts differently"):
        export(bees_run, dest)
    assert not dest.exists() and not list(tmp_path.glob("*.tmp")) and list(tmp_path.iterdir()) == [folder]


# ---------------------------------------------------------------- lr finder


def test_lr_find_returns_a_finite_suggestion(with_real_weights, capsys):
    out = run_cli(capsys, "lr-find", "demo", "--backbone", "mobilenet_v2", "--steps", "16", "--batch-size", "8",
                  "--image-size", "64", "--json")
    result = json.loads(out.strip().splitlines()[-1])
    lrs, losses = result["lrs"], result["losses"]
    assert len(lrs) >= 8 and lrs == sorted(lrs) and all(np.isfinite(losses))
    assert np.isfinite(result["suggestion"]) and lrs[0] <= result["suggestion"] <= lrs[-1]


def lr_finder_app():
    import streamlit as st

    from pages.ui.lr_find import render_lr_finder

    st.number_input("Learning rate (head)", 1e-6, 1.0, 1e-3, format="%.5f", key="train_lr")  # as on the Train page
    render_lr_finder("demo", "mobilenet_v2", image_size=64, steps=20)


def test_lr_finder_section_plots_and_one_click_sets_the_learning_rate(with_real_weights):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(lr_finder_app, default_timeout=300)
    at.run()
    at.button(key="lr_find_run").click().run()
    assert not at.exception, at.exception
    assert at.get("plotly_chart") and at.button(key="lr_find_use").label.startswith("Use learning rate")
    at.button(key="lr_find_use").click().run()
    suggested = float(at.button(key="lr_find_use").label.split()[-1])
    assert at.number_input(key="train_lr").value == pytest.approx(suggested, rel=0.06) != 1e-3


def test_lr_suggestion_is_the_steepest_descent():
    from tl_core.train.lr_find import suggest

    lrs = [10 ** (-6 + i * 0.25) for i in range(25)]
    losses = [1.0] * 8 + [1.0 - 0.05 * i for i in range(1, 5)] + [0.6, 0.3, 0.25] + [0.25 + 0.2 * i for i in range(10)]
    assert suggest(lrs, losses) == lrs[12]  # where 0.6 -> 0.3 starts: the biggest drop before the minimum


# ---------------------------------------------------------------- the Predict page


def test_predict_page_grad_cam_unsure_and_batch_table(ui, monkeypatch):  # noqa: F811
    from test_app import open_page, st_home

    home = Path(st_home())
    train("demo", TrainConfig(backbone="mobilenet_v3_small", pretrained=False, strategy="full", epochs=1, batch_size=16,
                              image_size=48, patience=0), os.environ["TL_STUDIO_RUNS"])
    demo = (home / "demo-v1").resolve()  # a link to the shared demo images: the data root must hold the real folder
    monkeypatch.setenv("TL_STUDIO_DATA_ROOT", str(demo.parent))
    at = open_page("pages/4_Predict.py")
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
