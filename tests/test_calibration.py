"""Temperature scaling is applied only where it lowers the calibration error on images it was not fitted on."""

import pytest
import torch

from tl_core.use import calibration


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
