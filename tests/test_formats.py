"""One way to write each kind of number."""

from tl_core.formats import count, percent, seconds


def test_each_kind_of_number_is_written_one_way():
    assert percent(0.9537) == "95.4%" and percent(None) == "-"
    assert [seconds(s) for s in (0.42, 12.34, 754.2)] == ["0.42 s", "12.3 s", "754 s"]
    assert count(1, "backbone") == "1 backbone" and count(3, "backbone") == "3 backbones" and count(0, "file") == "0 files"
