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


def sampled(n: int, sharpness: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose labels are drawn from softmax(logits / sharpness): calibrated at T = sharpness."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 3, generator=g) * 3
    labels = torch.multinomial((logits / sharpness).softmax(1), 1, generator=g).squeeze(1)
    return logits, labels


def test_calibrated_error_is_never_reported_worse_than_raw():
    applied = []
    for seed in range(8):
        for sharpness in (1.0, 2.5):  # already calibrated; overconfident (T = 2.5 fixes it)
            cal = calibration.calibrate(*sampled(60, sharpness, seed))
            assert cal.ece_calibrated <= cal.ece
            assert cal.applied == (cal.ece_scaled < cal.ece)
            assert cal.temperature == (cal.fitted_temperature if cal.applied else 1.0)
            assert cal.ece_calibrated == (cal.ece_scaled if cal.applied else cal.ece)
            applied.append((sharpness, cal.applied))
    assert all(a for s, a in applied if s == 2.5)  # clearly overconfident: scaling helps on held-out images
    assert not all(a for s, a in applied if s == 1.0)  # already calibrated: sometimes it does not, and is left off


def test_held_out_error_is_not_the_error_on_the_fitting_images():
    """Scored on the images it was fitted on, T looks better than it is; the record uses the other fold's T."""
    logits, labels = sampled(40, 1.0, 3)
    cal = calibration.calibrate(logits, labels)
    in_sample = calibration.ece((logits / cal.fitted_temperature).softmax(1), labels)
    assert cal.ece_scaled != pytest.approx(in_sample, abs=1e-6)
    assert cal.ece_scaled == pytest.approx(calibration.ece(calibration.held_out_scaled(logits, labels), labels), abs=1e-6)


def test_the_sentence_says_which_happened():
    helped = calibration.calibrate(*sampled(200, 2.5, 0))
    assert helped.applied and helped.sentence().startswith("Confidences are calibrated (temperature")
    kept = next(c for seed in range(8) if not (c := calibration.calibrate(*sampled(60, 1.0, seed))).applied)
    text = kept.sentence()
    assert "not rescaled" in text and "is not applied" in text and "calibrated (" not in text


def test_evaluate_applies_temperature_scaling_only_where_it_helps_on_ants_vs_bees(bees_run, capsys):
    report = json.loads(cli_out(capsys, "evaluate", str(bees_run), "--json").strip().splitlines()[-1])
    saved = calibration.load(bees_run, (bees_run / "best.safetensors").stat().st_mtime)
    assert saved is not None and report["ece_calibrated"] <= report["ece"] and 0.5 <= report["threshold"] < 1
    assert report["ece_calibrated"] == (saved.ece_scaled if saved.applied else saved.ece)  # held out, never in-sample
    assert report["temperature"] == (saved.fitted_temperature if saved.applied else 1.0)
    assert report["calibration"] == saved.sentence()
    assert saved.sentence() in cli_out(capsys, "evaluate", str(bees_run))  # the text output says which happened
    assert Predictor.from_run(bees_run).temperature == report["temperature"]  # the Predict page uses the same T

