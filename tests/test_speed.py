"""Measured speeds: warmed up, the median of several calls, cached per device and fed to the estimate."""

from __future__ import annotations

import time

from tl_core.config import TrainConfig
from tl_core.data.scan import scan
from tl_core.data.sources import DatasetSpec
from tl_core.measure import speed
from tl_core.measure.estimate import estimate


def test_measured_speed_is_cached_per_device_and_feeds_the_estimate():
    s = speed.measure("mobilenet_v3_small", batch=4, size=96, train_batch=4)
    assert s.ms_per_image > 0 and s.images_per_s > 0 and s.batch == 4 and s.train_images_per_s > 0
    assert speed.load_speeds()["mobilenet_v3_small"] == s
    report = scan(DatasetSpec("demo"))
    features = estimate(report, TrainConfig(backbone="mobilenet_v3_small", strategy="features", epochs=10), s)
    full = estimate(report, TrainConfig(backbone="mobilenet_v3_small", strategy="full", epochs=10), s)
    assert 0 < features.seconds < full.seconds  # embedding once is cheaper than training the network every epoch
    assert set(full.phases) >= {"decoding", "training", "validation"} and "embedding" in features.phases


def test_measurements_warm_up_and_take_the_median():
    """The first calls of a model are slow; one timing of them is not its speed."""
    import torch

    from tl_core.measure.speed import measure, median_seconds

    calls = []

    def slow_start():
        calls.append(1)
        time.sleep(0.3 if len(calls) <= 2 else 0.002)

    assert median_seconds(slow_start, torch.device("cpu"), warmup=3, reps=5) < 0.05
    s = measure("mobilenet_v3_small", torch.device("cpu"), batch=8, size=64, train_batch=8)
    per_image_batched_ms = 1000 / s.images_per_s
    assert 0 < s.ms_per_image < 20 * per_image_batched_ms  # batch 1 costs more per image, never 300x more
    assert s.train_images_per_s and s.train_images_per_s > 0
    assert "CPU" in s.device


def test_warm_up_lasts_as_long_as_the_cold_start():
    """A backbone that keeps getting faster for seven calls (kernel selection, weight packing) is timed once steady."""
    import torch

    calls = []

    def cold_start():
        calls.append(1)
        time.sleep(0.2 / 1.6 ** (len(calls) - 1) if len(calls) <= 7 else 0.002)  # 200, 125, 78 ... 12 ms, then 2 ms

    assert speed.median_seconds(cold_start, torch.device("cpu"), warmup=3, reps=5) < 0.008  # a fixed 3 gave 19 ms
    assert len(calls) >= 7 + 3  # every cold call was a warm-up call, then at least three timed ones


def test_each_measurement_records_how_busy_the_machine_was():
    busy = speed.machine_busy()
    assert busy is not None and 0.0 <= busy <= 1.0  # Linux: from /proc/stat
    s = speed.measure("mobilenet_v3_small", batch=2, size=64, train_batch=2)
    assert s.busy is not None and 0.0 <= s.busy <= 1.0
    assert speed.load_speeds()["mobilenet_v3_small"].busy == s.busy


def test_a_figure_taken_under_load_is_retaken_once_the_machine_is_quiet(monkeypatch):
    """A figure measured on a busy machine (or under unknown load, as figures kept without it) is measured again
    when the estimate asks on a quiet machine, and kept while the machine is busy; a quiet figure is always kept."""
    import dataclasses

    import torch

    device = torch.device("cpu")
    real = speed.measure("mobilenet_v3_small", device, batch=2, size=64, train_batch=2)
    for busy_then in (0.9, None):
        slow = dataclasses.replace(real, measured=real.measured - 3600, busy=busy_then)
        speed._store(device, slow)
        monkeypatch.setattr(speed, "machine_busy", lambda window=0.2: 0.9)  # still busy: the busy figure stands
        assert speed.current("mobilenet_v3_small", device) == slow
        monkeypatch.setattr(speed, "machine_busy", lambda window=0.2: 0.05)  # quiet: measured again
        again = speed.current("mobilenet_v3_small", device)
        assert again.measured > real.measured and again.busy == 0.05 and not again.taken_under_load
        assert speed.load_speeds(device)["mobilenet_v3_small"] == again
        assert speed.current("mobilenet_v3_small", device) == again  # quiet figure: kept, not measured again
