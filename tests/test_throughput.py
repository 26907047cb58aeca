"""Throughput measurement on CPU with tiny settings: the numbers are real timings and consistent with each other."""

import json
import math
import time

import torch

from tl_core.cli import main as cli
from tl_core.measure.throughput import median_ms


def test_median_ms_times_what_runs():
    ms = median_ms(lambda: time.sleep(0.01), torch.device("cpu"), steps=2, repeats=3)
    assert 10 <= ms < 100


def test_throughput_cli_on_cpu(capsys):
    code = cli.main(["throughput", "--models", "resnet18", "--size", "64", "--batch", "8", "--steps", "3", "--repeats", "2",
                     "--warmup", "1", "--infer-batch", "16", "--device", "cpu", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["settings"]["batch"] == 8 and out["settings"]["size"] == 64
    (r,) = out["results"]
    assert r["model"] == "resnet18" and r["peak_memory_mb"] is None
    for key in ("compute_ms", "fwd_bwd_ms", "pipeline_ms", "train_images_per_s", "infer_images_per_s", "pipeline_ratio"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert math.isclose(r["train_images_per_s"], 8 / r["compute_ms"] * 1000, rel_tol=0.01, abs_tol=0.051)  # 0.1 rounding
    assert math.isclose(r["pipeline_ratio"], r["pipeline_ms"] / r["compute_ms"], rel_tol=0.01, abs_tol=0.0006)
    # Sanity: no backward pass makes inference several times cheaper per image than a training step.
    assert r["infer_images_per_s"] > r["train_images_per_s"]
    assert r["fwd_bwd_ms"] < 2 * r["compute_ms"]


def test_bad_settings_are_one_clear_error(capsys):
    assert cli.main(["throughput", "--models", "resnet18", "--batch", "0", "--device", "cpu"]) == 1
    assert "at least 1" in capsys.readouterr().err
    assert cli.main(["throughput", "--models", "no_such_net", "--device", "cpu"]) == 1
    assert "Unknown backbone" in capsys.readouterr().err
