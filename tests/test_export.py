"""Exports: checked against TL Studio's own predictions, runnable outside it as the README says, and a
failed export leaves nothing behind."""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest
import torch
from helpers import bees_val_files
from PIL import Image

from tl_core.cli.main import main
from tl_core.data.scan import load_dataset
from tl_core.use.export import ExportError, export, load_check, load_export, run_file
from tl_core.use.predict import Predictor


def test_export_is_checked_and_reloads_to_the_same_predictions(demo_run, tmp_path):
    path = export(demo_run.run_dir, tmp_path / "model.zip")
    ds = load_dataset("demo")
    files = [s.path for s in ds.split("val")[:6]]
    a = Predictor.from_run(demo_run.run_dir).predict(files)
    b = load_export(path).predict(files)
    assert [x.top[0][0] for x in a] == [x.top[0][0] for x in b]
    assert [x.top[0][1] for x in a] == pytest.approx([x.top[0][1] for x in b], abs=1e-4)


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
    files = bees_val_files(8)
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
