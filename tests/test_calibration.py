"""Calibration: temperature scaling lowers the expected calibration error, and pictures of neither class
get low calibrated confidence ("unsure")."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import bees_val_files, cli_out
from PIL import Image

from tl_core.use import calibration
from tl_core.use.predict import UNSURE, Predictor


def test_temperature_scaling_lowers_ece_on_ants_vs_bees(bees_run, capsys):
    report = json.loads(cli_out(capsys, "evaluate", str(bees_run), "--json").strip().splitlines()[-1])
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
    val = [p.top[0][1] for p in predictor.predict(bees_val_files(30), top_k=1)]
    ood = predictor.predict(out_of_class_images(), top_k=1)
    assert np.mean([p.top[0][1] for p in ood]) < np.mean(val) - 0.1
    assert sum(p.answer(predictor.threshold) == UNSURE for p in ood) > len(ood) / 2  # most say "none of these"
