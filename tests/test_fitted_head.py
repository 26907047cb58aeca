"""Issue 14 (accuracy): the feature-extraction head is fitted to convergence, with regularisation chosen by
cross-validation on the training split, so a run reaches exactly what a cross-validated linear probe on the same
frozen features reaches, also on small greyscale images."""

import pytest
from conftest import HYMENOPTERA
from PIL import Image

from tl_core.config import TrainConfig
from tl_core.data.scan import load_dataset
from tl_core.data.sources import DatasetSpec
from tl_core.features.compare import compare
from tl_core.train.runs import load_run
from tl_core.train.trainer import train


def small_grey_copy(src, dst, size: int = 28):
    """Ants vs bees as 28 px greyscale: far smaller than the backbone's crop, one channel."""
    for path in src.rglob("*.jpg"):
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("L").resize((size, size)).save(out.with_suffix(".png"))
    return dst


@pytest.mark.skipif(not HYMENOPTERA.exists(), reason="../shared/data is absent")
def test_a_feature_run_reaches_the_cross_validated_probe_on_small_greyscale_images(with_real_weights, tmp_path):
    data = small_grey_copy(HYMENOPTERA, tmp_path / "ants28")
    config = TrainConfig(backbone="mobilenet_v2", strategy="features", image_size=112)
    result = train(DatasetSpec(str(data)), config, tmp_path / "runs")
    probe = compare(load_dataset(DatasetSpec(str(data))), ["mobilenet_v2"], config)[0]
    assert result.best_val_accuracy == pytest.approx(probe.val_accuracy, abs=0.007)  # one val image of 153
    assert result.best_val_accuracy > 0.6  # two classes: chance is 0.5
    run = load_run(result.run_dir)
    assert run.info["preprocessing"]["resize"] == run.info["preprocessing"]["crop"] == 112  # whole image, no crop
    fit = run.summary["head_fit"]
    assert fit["method"].startswith("L-BFGS") and fit["l2"] > 0 and 0 < fit["cv_accuracy"] <= 1
