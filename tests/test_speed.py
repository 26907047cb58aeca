from tl_core import speed


def test_measured_speed_is_cached_per_device_and_feeds_the_estimate():
    s = speed.measure("mobilenet_v3_small", batch=4, size=96)
    assert s.ms_per_image > 0 and s.images_per_s > 0 and s.batch == 4
    assert speed.load_speeds()["mobilenet_v3_small"] == s
    features = speed.estimate_seconds(s, 300, 80, "features", 10)
    full = speed.estimate_seconds(s, 300, 80, "full", 10)
    assert 0 < features < full  # embedding once is cheaper than training the network every epoch
    assert speed.estimate_seconds(None, 300, 80, "full", 10) is None
