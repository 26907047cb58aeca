"""Backbone comparison on your data: JSON from the CLI, unavailable weights reported, the cache reused."""

import json

from helpers import cli

from tl_core.config import TrainConfig
from tl_core.data.scan import load_dataset
from tl_core.features.compare import Comparison, compare, pareto_front, recommend


def row(name: str, acc: float | None, ms: float | None) -> Comparison:
    return Comparison(name, acc, acc, 0.01, 1, ms, 10.0, 1.0, None if acc is not None else "no weights")


def test_pareto_front_and_recommendation():
    rows = [row("big", 0.95, 40.0), row("mid", 0.945, 10.0), row("small", 0.90, 3.0), row("worse", 0.89, 20.0),
            row("missing", None, None)]
    assert pareto_front(rows) == ["big", "mid", "small"]
    assert recommend(rows) == "mid"  # within a point of the best, four times faster
    assert recommend([row("missing", None, None)]) is None


def test_compare_cli_json_then_the_cache_is_reused(with_real_weights):
    out = cli("compare", "demo", "--backbones", "mobilenet_v2", "resnet18", "--image-size", "64", "--json",
              env={"TORCH_HOME": str(with_real_weights)})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    mobilenet, resnet = result["backbones"]
    assert mobilenet["name"] == "mobilenet_v2" and mobilenet["val_accuracy"] > 0.6  # 5 classes: chance is 0.2
    assert mobilenet["ms_per_image"] > 0 and mobilenet["size_mb"] > 10 and mobilenet["seconds"] > 0
    assert resnet["val_accuracy"] is None and "resnet18-f37072fd.pth" in resnet["error"]  # reported, not crashed on
    assert result["recommended"] == "mobilenet_v2" and result["pareto_front"] == ["mobilenet_v2"]

    phases = []
    again = compare(load_dataset("demo"), ["mobilenet_v2"], TrainConfig(image_size=64), lambda p, d, n: phases.append(p))
    assert again[0].val_accuracy == mobilenet["val_accuracy"]
    assert phases and not any("embedding" in p for p in phases)  # every view came from the cache


def test_compare_reads_the_embeddings_a_feature_extraction_run_cached(with_real_weights, tmp_path):
    """Both key the cache the same way: after a run, comparing that backbone costs no backbone pass."""
    from tl_core.train.trainer import train

    train("demo", TrainConfig(backbone="mobilenet_v2", image_size=48, epochs=1, seed=3), tmp_path)
    phases = []
    rows = compare(load_dataset("demo"), ["mobilenet_v2"], TrainConfig(image_size=48, seed=3),
                   lambda p, d, n: phases.append(p))
    assert rows[0].val_accuracy > 0.5 and rows[0].views in (1, 2)
    assert phases and not any("embedding" in p for p in phases)


def test_the_compare_chart_keeps_accuracy_within_0_to_100_percent():
    from app_pages.ui.compare import accuracy_latency_figure

    fig, _ = accuracy_latency_figure([row("big", 0.99, 40.0), row("small", 0.98, 3.0)])
    assert tuple(fig.layout.yaxis.range) == (0, 1.05) and fig.layout.yaxis.tickformat.endswith("%")
