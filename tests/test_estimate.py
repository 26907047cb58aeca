"""The time estimate's shape, without timing anything: the phases the run will have, the child process's start-up,
finite positive seconds that grow with the epochs. How close it comes to a real run is a timed comparison and
lives in bench/estimate_vs_real.py (a unit test on a shared, busy machine cannot time one fairly)."""

from __future__ import annotations

import math
import time

import pytest

from tl_core.config import TrainConfig
from tl_core.data.scan import scan
from tl_core.data.sources import DatasetSpec
from tl_core.measure.estimate import FIXED_SECONDS, child_startup_seconds, estimate
from tl_core.measure.speed import Speed

# a speed table entry written by hand: the estimate's arithmetic, not this machine's speed, is under test
SPEED = Speed("mobilenet_v3_small", "test", ms_per_image=5.0, images_per_s=200.0, batch=16, train_images_per_s=40.0,
              train_batch=16, measured=time.time(), busy=0.0)


@pytest.fixture(scope="module")
def demo():
    return scan(DatasetSpec("demo"))


def full(demo, epochs: int):
    return estimate(demo, TrainConfig(backbone="mobilenet_v3_small", strategy="full", epochs=epochs, patience=0), SPEED)


def test_the_estimate_has_the_phases_of_the_run_and_its_start_up(demo):
    features = estimate(demo, TrainConfig(backbone="mobilenet_v3_small", strategy="features"), SPEED)
    tuned = full(demo, 3)
    for est in (features, tuned):
        assert math.isfinite(est.seconds) and est.seconds > 0 and all(math.isfinite(s) and s >= 0 for s in est.phases.values())
        assert est.seconds == pytest.approx(sum(est.phases.values()))
        assert est.phases["starting"] == child_startup_seconds() > 0  # a job is a fresh interpreter importing torch
        assert est.phases["setup"] == FIXED_SECONDS
    assert {"decoding", "embedding", "fitting the head"} <= set(features.phases) and "training" not in features.phases
    assert {"decoding", "training", "validation"} <= set(tuned.phases) and "embedding" not in tuned.phases
    assert features.seconds < tuned.seconds  # embedding once costs less than training the network every epoch
    assert features.describe().startswith("about ") and "starting" in features.describe()


def test_training_time_grows_with_the_epochs_and_the_slower_backbone(demo):
    two, four = full(demo, 2), full(demo, 4)
    assert four.phases["training"] == pytest.approx(2 * two.phases["training"], rel=0.1)  # the plan's sizes per epoch vary
    assert four.phases["validation"] == pytest.approx(2 * two.phases["validation"])
    assert four.phases["starting"] == two.phases["starting"] and four.seconds > two.seconds
    slower = estimate(demo, TrainConfig(backbone="mobilenet_v3_small", strategy="full", epochs=2, patience=0),
                      Speed(**{**SPEED.__dict__, "train_images_per_s": 20.0}))
    assert slower.phases["training"] == pytest.approx(2 * two.phases["training"])
