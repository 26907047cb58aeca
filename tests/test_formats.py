"""One way to write each kind of number."""

from tl_core.formats import NOT_MEASURED, count, figure, loss, percent, seconds


def test_each_kind_of_number_is_written_one_way():
    assert percent(0.9537) == "95.4%" and percent(None) == NOT_MEASURED == "—"
    assert figure(12.345) == "12.3" and figure(512.4, 0) == "512" and figure(None) == figure(float("nan")) == NOT_MEASURED
    assert loss(None) == seconds(None) == seconds(float("nan")) == NOT_MEASURED
    assert [seconds(s) for s in (0.42, 12.34, 754.2)] == ["0.42 s", "12.3 s", "754 s"]
    assert count(1, "backbone") == "1 backbone" and count(3, "backbone") == "3 backbones" and count(0, "file") == "0 files"


def test_the_bench_and_the_estimate_write_accuracies_and_durations_the_same_way(capsys):
    import re

    from tl_core.measure.bench import _table
    from tl_core.measure.estimate import Estimate

    _table({"features": {"TL Studio": {"seconds": 12.34, "images_per_s": 80.0, "best_val_accuracy": 0.9542}}},
           ("seconds", "images_per_s", "best_val_accuracy"))
    row = capsys.readouterr().err.splitlines()[-1]
    assert "12.3 s" in row and "95.4%" in row and "0.9542" not in row
    text = Estimate(754.2, {"starting": 4.04, "embedding": 0.42, "training": 740.0}).describe()
    assert text == f"about {seconds(754.2)} (starting {seconds(4.04)}, training {seconds(740.0)})"
    assert re.fullmatch(r"about 754 s \(starting 4\.0 s, training 740 s\)", text)
