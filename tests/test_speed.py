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
