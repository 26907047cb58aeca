"""Calibration: temperature scaling lowers the expected calibration error, and pictures of neither class
get low calibrated confidence ("unsure")."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
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



def lopsided_validation() -> tuple[torch.Tensor, torch.Tensor]:
    """200 confident, right answers of a big class and 20 hesitant ones (about 70%) of a small class, some wrong."""
    g = torch.Generator().manual_seed(0)
    big = torch.stack([3.5 + 0.5 * torch.randn(200, generator=g), torch.zeros(200)], 1)
    small = torch.stack([torch.zeros(20), 0.9 + 0.4 * torch.randn(20, generator=g)], 1)
    return torch.cat([big, small]), torch.cat([torch.zeros(200), torch.ones(20)]).long()


def test_the_unsure_threshold_keeps_the_small_class_s_right_answers_too():
    logits, labels = lopsided_validation()
    cal = calibration.calibrate(logits, labels)
    probs = (logits / cal.temperature).softmax(1)
    conf, pred = probs.max(1)
    right_small = conf[(pred == labels) & (labels == 1)]
    assert (right_small >= cal.threshold).float().mean() >= 0.85  # about 95% of each class's right answers stay
    plain = torch.quantile(conf[pred == labels], 1 - calibration.RECALL_KEPT)  # every right answer alike
    assert (right_small >= plain).float().mean() < 0.7  # would send a third or more of the bees to "unsure"


def test_temperature_and_error_weigh_each_class_as_if_the_classes_were_equal():
    """Weighting by inverse class frequency is the same as repeating the small class until the classes are equal:
    a big class that is over-confident (15% confidently wrong) no longer sets the temperature of a small one that
    is right but hesitant."""
    g = torch.Generator().manual_seed(1)
    big = torch.cat([torch.tensor([[3.0, 0.0]]).repeat(170, 1), torch.tensor([[0.0, 3.0]]).repeat(30, 1)])
    small = torch.tensor([[0.0, 1.0]]).repeat(20, 1)
    logits = torch.cat([big, small]) + 0.3 * torch.randn(220, 2, generator=g)
    labels = torch.cat([torch.zeros(200), torch.ones(20)]).long()
    is_small = labels == 1
    equal_logits = torch.cat([logits[~is_small], logits[is_small].repeat(10, 1)])
    equal_labels = torch.cat([labels[~is_small], labels[is_small].repeat(10)])
    balanced_t = calibration.fit_temperature(logits, labels)
    assert balanced_t == pytest.approx(calibration.fit_temperature(equal_logits, equal_labels), rel=1e-3)
    assert calibration.ece(logits.softmax(1), labels) == pytest.approx(calibration.ece(equal_logits.softmax(1), equal_labels))
    grid = torch.linspace(0.2, 5, 481)
    plain_t = float(grid[torch.stack([F.cross_entropy(logits / t, labels) for t in grid]).argmin()])  # every image alike
    assert plain_t > balanced_t + 0.1  # the big class alone would soften every answer more


def test_the_familiarity_threshold_keeps_the_small_class_s_validation_pictures():
    """A small class has few training pictures near its own, so its validation pictures lie further out; with their
    labels the threshold keeps 95% of each class, not 95% of whatever is most common."""
    from tl_core.use import familiarity

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 32, generator=g)

    def around(centre: torch.Tensor, n: int, spread: float) -> torch.Tensor:
        return centre + spread * torch.randn(n, 32, generator=g)

    train = torch.cat([around(a, 300, 0.3), around(b, 10, 0.3)])
    val, labels = torch.cat([around(a, 200, 0.3), around(b, 20, 0.3)]), torch.cat([torch.zeros(200), torch.ones(20)]).long()
    balanced = familiarity.fit(train, val, 0.0, labels)
    plain = familiarity.fit(train, val, 0.0)
    small = balanced.distance(val[labels == 1])
    assert (small <= balanced.threshold).float().mean() >= 0.85
    assert (small <= plain.threshold).float().mean() < 0.7
    big = balanced.distance(val[labels == 0])
    assert (big <= balanced.threshold).float().mean() >= 0.9  # the big class loses little
