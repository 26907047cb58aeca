"""The plan: every derived decision made once, and every consumer seeing the same pixels."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from tl_core import plan
from tl_core.cli.main import main
from tl_core.config import TrainConfig
from tl_core.data.scan import load_dataset, scan
from tl_core.data.sources import DatasetSpec
from tl_core.features.compare import compare
from tl_core.features.health import check_health
from tl_core.measure.estimate import estimate
from tl_core.models.backbones import Preprocessing
from tl_core.train.runs import load_run
from tl_core.train.trainer import train


def test_the_path_epochs_and_sizes_follow_the_config():
    prep = Preprocessing.imagenet()
    fitted = plan.make(TrainConfig(strategy="features"), prep)
    assert fitted.fitted_head and fitted.epochs == 1 and fitted.sizes == (224,)
    assert not plan.make(TrainConfig(strategy="features", backbone="squeezenet1_1"), prep).fitted_head  # a conv head
    assert not plan.make(TrainConfig(strategy="features", embedding_cache=False), prep).fitted_head
    tuned = plan.make(TrainConfig(strategy="finetune", epochs=4), prep)
    assert tuned.epochs == 4 and len(tuned.sizes) == 4 and tuned.sizes[0] < tuned.sizes[-1] < 224  # progressive, FixRes
    assert plan.make(TrainConfig(feature_views=3, augment="none"), prep).views == 1


def test_letterbox_is_decided_beside_the_small_image_rule_and_travels_with_the_run(shapes_folder, tmp_path):
    """`fit` letterbox: the whole picture in the crop's square whatever the pictures' size (no small-image rule to
    apply: nothing is cut), stored in run.json and read back by whoever uses the run."""
    paths = [str(p) for p in shapes_folder.rglob("*.png")]  # 48 px: under half the crop, resized whole when cropping
    crop = plan.preprocessing(TrainConfig(), paths)
    box = plan.preprocessing(TrainConfig(fit="letterbox"), paths)
    assert (crop.fit, crop.resize, crop.crop) == ("crop", 224, 224)
    assert box == Preprocessing.imagenet(224).letterboxed() and (box.resize, box.crop) == (224, 224)
    assert plan.preprocessing(TrainConfig(fit="letterbox", image_size=96), paths) == Preprocessing.imagenet(96).letterboxed()
    assert "letterbox" in box.describe() and "letterbox" not in crop.describe()
    assert Preprocessing.from_dict({k: v for k, v in asdict(crop).items() if k != "fit"}) == crop  # a run.json without it
    assert Preprocessing.from_dict(json.loads(json.dumps(asdict(box)))) == box
    with pytest.raises(ValueError, match="fit must be one of crop, letterbox"):
        plan.check(TrainConfig(fit="stretch"))


def test_settings_that_change_nothing_are_named():
    assert plan.unused_options(TrainConfig(strategy="features")) >= {"epochs", "lr", "progressive_resize", "finetune_stages"}
    assert plan.unused_options(TrainConfig(strategy="finetune")) == frozenset()
    assert plan.unused_options(TrainConfig(strategy="full")) == {"finetune_stages"}


def test_a_frozen_backbone_of_random_weights_is_refused_everywhere(capsys):
    config = TrainConfig(strategy="features", pretrained=False)
    assert "cannot learn" in plan.cannot_learn(config)
    with pytest.raises(ValueError, match="cannot learn"):
        plan.check(config)
    assert main(["train", "demo", "--no-pretrained"]) == 1
    assert "cannot learn" in capsys.readouterr().err
    assert plan.cannot_learn(TrainConfig(strategy="full", pretrained=False)) is None  # from scratch: slow, but it learns


@pytest.mark.parametrize("fit", ["crop", "letterbox"])
def test_training_health_compare_and_the_estimate_embed_identical_pixels(shapes_folder, with_real_weights, tmp_path,
                                                                        monkeypatch, fit):
    """48-px pictures: the small-image rule resizes them whole (letterbox: whole anyway). Every consumer asks the
    plan, so after a training run has cached its embeddings the health check and compare add none and the estimate
    expects none to compute."""
    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "home"))
    spec = DatasetSpec(str(shapes_folder), val_fraction=0.3, split_seed=1)
    config = TrainConfig(backbone="mobilenet_v2", strategy="features", fit=fit)
    run = load_run(train(spec, config, tmp_path / "runs").run_dir)
    prep = Preprocessing.from_dict(run.info["preprocessing"])
    assert prep.resize == prep.crop == 224 and prep.fit == fit  # whole picture, no crop
    assert prep == plan.preprocessing(config, [s.path for s in load_dataset(spec).samples])

    embeddings = tmp_path / "home" / "embeddings"

    def shards() -> set[str]:
        return {str(p.relative_to(embeddings)) for p in embeddings.rglob("*.safetensors")}

    trained = shards()
    assert trained
    check_health(load_dataset(spec), "mobilenet_v2", fit=fit)
    assert shards() == trained  # the health check read the training run's embeddings: the same pixels
    compare(load_dataset(spec), ["mobilenet_v2"], config)
    assert shards() == trained
    assert estimate(scan(spec), config).phases["embedding"] == 0


def test_class_weights_switch_on_at_the_cut_and_the_setting_overrides():
    prep = Preprocessing.imagenet()
    assert plan.make(TrainConfig(), prep, [100, 40]).class_weights is None  # 2.5x: under the cut
    weighted = plan.make(TrainConfig(), prep, [120, 40]).class_weights  # 3x: at the cut
    assert weighted == pytest.approx((160 / 240, 160 / 80))  # n / (C n_c): each class weighs the same in total
    assert plan.make(TrainConfig(balance="none"), prep, [1000, 10]).class_weights is None
    assert plan.make(TrainConfig(balance="weights"), prep, [50, 50]).class_weights == (1.0, 1.0)
    assert plan.make(TrainConfig(balance="weights"), prep, [60, 40]).class_weights == pytest.approx((100 / 120, 100 / 80))
    assert plan.make(TrainConfig(balance="weights"), prep).class_weights is None  # no counts: nothing to weigh
    with pytest.raises(ValueError, match="balance must be one of auto, weights, none"):
        TrainConfig(balance="oversample").validate()
