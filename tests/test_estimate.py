"""The time estimate against the real run it predicts."""

from __future__ import annotations

import time

import pytest
from helpers import HYMENOPTERA

from tl_core.config import TrainConfig
from tl_core.data.scan import scan
from tl_core.data.sources import DatasetSpec
from tl_core.train.trainer import train


@pytest.mark.skipif(not HYMENOPTERA.exists(), reason="../shared/data is absent")
@pytest.mark.parametrize("strategy,epochs", [("features", 5), ("full", 2)])
def test_the_estimate_is_within_2x_of_the_real_run(with_real_weights, tmp_path, monkeypatch, strategy, epochs):
    """The estimate comes from measured rates of the phases the run really has (cold caches)."""
    from tl_core.measure.estimate import estimate

    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "cold"))
    spec = DatasetSpec(str(HYMENOPTERA))
    config = TrainConfig(backbone="mobilenet_v2", strategy=strategy, epochs=epochs, patience=0)
    est = estimate(scan(spec), config)
    predicted = est.seconds - est.phases["starting"]  # trained in this process: no new interpreter to start
    t = time.perf_counter()
    train(spec, config, tmp_path / "runs")
    real = time.perf_counter() - t
    assert 0.5 * predicted <= real <= 2 * predicted, (real, predicted)
