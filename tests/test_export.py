"""Exports: checked against TL Studio's own predictions, runnable outside it as the README says, and a
failed export leaves nothing behind."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import HYMENOPTERA, bees_val_files, red_at_left
from onnx import TensorProto, helper
from PIL import Image

from tl_core.cli.main import main
from tl_core.data.pipeline import Batcher, square
from tl_core.data.scan import load_dataset
from tl_core.models.backbones import Preprocessing
from tl_core.train.runs import load_run
from tl_core.use import onnx_pictures
from tl_core.use.export import INT8_SIZE_SHARE, ExportError, example, export, load_card, load_check, load_export, load_meta, run_file
from tl_core.use.predict import Predictor

IMAGENET = Preprocessing.imagenet(64)


def test_export_is_checked_and_reloads_to_the_same_predictions(demo_run, tmp_path):
    path = export(demo_run.run_dir, tmp_path / "model.zip")
    ds = load_dataset("demo")
    files = [s.path for s in ds.split("val")[:6]]
    a = Predictor.from_run(demo_run.run_dir).predict(files)
    b = load_export(path).predict(files)
    assert [x.top[0][0] for x in a] == [x.top[0][0] for x in b]
    assert [x.top[0][1] for x in a] == pytest.approx([x.top[0][1] for x in b], abs=1e-4)


@pytest.mark.parametrize("fmt", ["torchscript"])  # the pictures-in ONNX files: tests/test_export.py
def test_export_runs_outside_tl_studio_with_the_same_probabilities(bees_run, tmp_path, fmt):
    path = export(bees_run, tmp_path / "model.zip", fmt)
    check = load_check(path)
    assert check["images"] == 16 and check["max_abs_diff"] <= 1e-3
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        meta = json.loads(zf.read("model.json"))
        readme = zf.read("MODEL_CARD.md").decode()
        zf.extractall(tmp_path / "unpacked")
    assert names == {meta["file"], "model.json", "MODEL_CARD.md", meta["familiarity"]["file"]} and meta["classes"] == ["ants", "bees"]
    # the file alone, on other images, against TL Studio's own predictions
    files = bees_val_files(8)
    predictor = Predictor.from_run(bees_run, "cpu")
    predictor.dtype = None
    from tl_core.data.pipeline import decode_square

    u8 = torch.from_numpy(np.stack([decode_square(f, predictor.prep) for f in files])).permute(0, 3, 1, 2)
    got = run_file(tmp_path / "unpacked" / meta["file"], fmt, predictor.batcher.eval(u8).float().contiguous().numpy(), meta)
    assert np.abs(got - predictor.probabilities(u8).numpy()).max() <= 1e-3
    # the card's loading example, run as written (ten lines)
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) <= 11
    photo = tmp_path / "photo.png"  # lossless: TL Studio decodes JPEGs at reduced scale (draft), plain Pillow does not
    Image.open(files[0]).save(photo)
    code = code.replace('"model.zip"', repr(str(path))).replace('"photo.jpg"', repr(str(photo)))
    scope: dict = {}
    exec(compile(code, "MODEL_CARD", "exec"), scope)
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


def preprocessing_only(prep: Preprocessing):
    """The preprocessing nodes alone, as an onnxruntime session: pixels in, normalised network input out."""
    nodes, consts = onnx_pictures.preprocessing_nodes(prep)
    graph = helper.make_graph(nodes, "prep", [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["n", "h", "w", 3])],
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, None)], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    return onnx_pictures.inference(model.SerializeToString())


def smooth_picture(size: tuple[int, int], cell: float = 8) -> Image.Image:
    """Random colours varying over `cell` px: photo-like detail (onnxruntime's antialiased resize departs from
    Pillow's and torch's on detail finer than the output's pixels, as on noise)."""
    rng = np.random.default_rng(sum(size))
    cells = rng.integers(0, 256, (int(size[1] / cell) + 2, int(size[0] / cell) + 2, 3), dtype=np.uint8)
    return Image.fromarray(cells).resize(size, Image.BICUBIC)


def graph_against_pipeline(prep: Preprocessing, picture: Image.Image) -> np.ndarray:
    """Grey levels between the preprocessing graph and `square` + `Batcher.eval` on one picture, per pixel."""
    got = preprocessing_only(prep).run(None, {"pixels": np.asarray(picture)[None]})[0]
    expected = Batcher(prep, torch.device("cpu"), "none").eval(torch.from_numpy(square(picture, prep)).permute(2, 0, 1)[None])
    assert got.shape == (1, 3, prep.crop, prep.crop)
    return np.abs(got - expected.numpy()) * np.asarray(prep.std).reshape(1, 3, 1, 1) * 255


@pytest.mark.parametrize("prep", [IMAGENET, Preprocessing(64, 64, IMAGENET.mean, IMAGENET.std)], ids=["crop", "whole"])
@pytest.mark.parametrize("size", [(200, 150), (151, 301), (40, 30), (73, 73)])
def test_preprocessing_graph_matches_the_pipeline_on_any_size(prep, size):
    grey_levels = graph_against_pipeline(prep, smooth_picture(size))
    assert grey_levels.max() <= 1.01 and (grey_levels > 0.5).mean() < 0.05  # fixed-point rounding, rarely


@pytest.mark.parametrize("size", [(300, 100), (100, 300), (200, 150), (40, 30), (64, 21), (73, 73)])
def test_letterbox_graph_matches_the_pipeline_on_wide_and_tall_pictures(size):
    """Long side to the square, the rest padded with the mean colour: the pad is exactly the pipeline's."""
    prep = IMAGENET.letterboxed()
    grey_levels = graph_against_pipeline(prep, smooth_picture(size, 8 * max(1, max(size) / prep.crop)))  # 8 px resized
    assert grey_levels.max() <= 1.01 and (grey_levels > 0.5).mean() < 0.05
    long, short = max(size), min(size)
    pad = round((prep.crop - round(short * prep.crop / long)) / 2)
    if pad:  # the first rows (wide) or columns (tall) are fill, in the graph as in the pipeline
        got = preprocessing_only(prep).run(None, {"pixels": np.asarray(smooth_picture(size))[None]})[0]
        edge = got[0, :, :pad, :] if size[0] > size[1] else got[0, :, :, :pad]
        fill = (np.asarray(prep.fill) - np.asarray(prep.mean) * 255) / (np.asarray(prep.std) * 255)
        assert np.allclose(edge, fill.reshape(3, 1, 1), atol=1e-5) and np.abs(fill).max() < 0.01  # the mean: ~zero


def test_pictures_in_onnx_matches_predict_and_carries_its_card(bees_features_run, tmp_path):
    path = export(bees_features_run, tmp_path / "model.zip", "onnx")
    meta = load_meta(path)
    check = meta["check"]
    assert check["pictures"] == check["same_top1"] == 153 and check["max_abs_diff"] <= 0.01
    with zipfile.ZipFile(path) as zf:
        assert set(zf.namelist()) == {"model.onnx", "model.json", "MODEL_CARD.md", "familiar.safetensors"}
        zf.extractall(tmp_path / "unpacked")
    model = onnx.load(str(tmp_path / "unpacked" / "model.onnx"))
    (pixels,) = model.graph.input
    dims = [d.dim_value or d.dim_param for d in pixels.type.tensor_type.shape.dim]
    assert pixels.type.tensor_type.elem_type == TensorProto.UINT8 and dims[1:] == ["height", "width", 3]
    assert onnx_pictures.class_names(tmp_path / "unpacked" / "model.onnx") == ["ants", "bees"]
    # pictures of other sizes than the run's, against predict on the same pictures
    photo = Image.open(sorted((HYMENOPTERA / "val" / "bees").iterdir())[3]).convert("RGB")
    odd = [photo.resize((301, 170)), photo.resize((90, 333)), photo.crop((0, 0, 120, 120))]
    got = onnx_pictures.probabilities(tmp_path / "unpacked" / "model.onnx", [np.asarray(p)[None] for p in odd])
    predictor = Predictor.from_run(bees_features_run, "cpu")
    predictor.dtype = None
    for probs, p in zip(got, predictor.predict(odd, 2)):
        assert dict(p.top) == pytest.approx(dict(zip(["ants", "bees"], probs.tolist())), abs=0.01)
    # the card's example, run as written
    card = load_card(path)
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    photo.save(tmp_path / "photo.png")
    code = code.replace('"model.zip"', repr(str(path))).replace('"photo.jpg"', repr(str(tmp_path / "photo.png")))
    scope: dict = {}
    exec(compile(code, "MODEL_CARD", "exec"), scope)
    best, probability = predictor.predict([photo], 1)[0].top[0]
    assert ["ants", "bees"][int(scope["probs"].argmax())] == best and abs(float(scope["probs"].max()) - probability) < 0.01


def test_int8_keeps_accuracy_in_a_third_of_the_size(bees_features_run, tmp_path):
    path = export(bees_features_run, tmp_path / "int8.zip", "onnx-int8")
    c = load_meta(path)["check"]
    assert c["pictures"] == 153 and c["accuracy_int8"] >= c["accuracy_float"] - 0.01 and c["accuracy_float"] > 0.8
    assert c["size_int8"] <= INT8_SIZE_SHARE * c["size_float"] and c["size_share"] == c["size_int8"] / c["size_float"]
    assert c["speedup"] > 0 and f"({c['speedup']:.2f}x)" in load_card(path)
    with zipfile.ZipFile(path) as zf:
        ops = {n.op_type for n in onnx.load_from_string(zf.read("model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Resize"} <= ops


def test_default_export_card_names_every_class_the_accuracy_and_the_calibration(bees_features_run, tmp_path):
    card = load_card(export(bees_features_run, tmp_path / "model.zip"))
    assert "ants" in card and "bees" in card and "| ants | 124 | 70 |" in card and "| bees | 121 | 83 |" in card
    assert re.search(r"Validation accuracy: \*\*\d+\.\d%\*\* on 153 images", card)
    assert re.search(r"Balanced accuracy \(the mean of the per-class recall\): \*\*\d+\.\d%\*\*", card)
    assert "expected calibration error" in card and "Unsure threshold" in card and "feature extraction" in card
    assert "safetensors" in card and "```python" in card


def test_letterbox_run_exports_its_padding_into_the_onnx_graph_and_the_card(letterbox_run, tmp_path):
    """A letterbox run: the pictures-in ONNX file pads as predict does, on wide, tall and small pictures of
    sizes the run never saw; the safetensors card's example letterboxes in Pillow and agrees too."""
    path = export(letterbox_run, tmp_path / "model.zip", "onnx")
    meta = load_meta(path)
    assert meta["preprocessing"]["fit"] == "letterbox" and meta["check"]["same_top1"] == meta["check"]["pictures"] == 40
    assert "letterbox" in load_card(path)
    with zipfile.ZipFile(path) as zf:
        model = zf.read("model.onnx")
    assert "Pad" in {n.op_type for n in onnx.load_from_string(model).graph.node}
    source = sorted((Path(load_run(letterbox_run).info["dataset"]["source"]) / "val" / "red").iterdir())[0]
    photo = Image.open(source).convert("RGB")
    odd = [photo.resize((450, 120)), photo.resize((100, 300)), photo.resize((60, 20)),
           red_at_left((333, 91))]
    got = onnx_pictures.probabilities(model, [np.asarray(p)[None] for p in odd])
    predictor = Predictor.from_run(letterbox_run, "cpu")
    predictor.dtype = None
    for probs, p in zip(got, predictor.predict(odd, 2)):
        assert dict(p.top) == pytest.approx(dict(zip(predictor.classes, probs.tolist())), abs=0.01)
    assert predictor.classes[int(got[-1].argmax())] == "red"  # the red square at the far left edge is seen
    # the tensor-input file's card example, run as written: its Pillow letterbox
    card = load_card(export(letterbox_run, tmp_path / "weights.zip"))
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert "Image.new" in code and len(code.strip().splitlines()) <= len(example("safetensors", "crop").strip().splitlines())
    red_at_left((333, 91)).save(tmp_path / "photo.png")
    code = code.replace('"model.zip"', repr(str(tmp_path / "weights.zip"))).replace('"photo.jpg"', repr(str(tmp_path / "photo.png")))
    scope: dict = {}
    exec(compile(code, "MODEL_CARD", "exec"), scope)
    best, probability = predictor.predict([tmp_path / "photo.png"], 1)[0].top[0]
    assert best == "red" and predictor.classes[int(scope["probs"].argmax())] == best
    assert abs(float(scope["probs"].max()) - probability) < 0.02
