"""Grad-CAM: maps of the right shape and range that depend on the class, for CNNs and vision transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import bees_val_files, cli_out
from PIL import Image

from tl_core.use.explain import explain
from tl_core.use.predict import Predictor


def test_grad_cam_map_shape_range_and_class_dependence(bees_run, tmp_path, capsys):
    predictor = Predictor.from_run(bees_run)
    image = bees_val_files(2)[1]  # a bee
    ants, bees = explain(predictor, image, "ants"), explain(predictor, image, "bees")
    crop = predictor.prep.crop
    for e in (ants, bees):
        assert e.heatmap.shape == (crop, crop) and e.image.shape == (crop, crop, 3) and np.isfinite(e.heatmap).all()
        assert e.heatmap.min() >= 0 and e.heatmap.max() <= 1
    predicted = explain(predictor, image)
    assert predicted.class_name == predictor.predict([image])[0].top[0][0]
    assert predicted.heatmap.max() == pytest.approx(1.0)  # scaled to its strongest evidence
    assert np.abs(ants.heatmap - bees.heatmap).mean() > 0.05  # evidence for each class lies in different places
    out = tmp_path / "heat.png"
    printed = cli_out(capsys, "explain", str(bees_run), image, "--out", str(out), "--json")
    assert json.loads(printed)["class"] in ("ants", "bees")
    assert Image.open(out).size == (crop, crop)


def test_grad_cam_runs_for_a_vision_transformer():
    from torchvision.models.vision_transformer import VisionTransformer

    from tl_core.models.backbones import Preprocessing
    from tl_core.models.cam_targets import TARGETS, cam_target

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3)
    torch.nn.init.normal_(vit.heads.head.weight)  # torchvision starts the head at zero: no gradient at all
    predictor = Predictor(vit, ["a", "b", "c"], Preprocessing.imagenet(32), torch.device("cpu"))
    image = Image.fromarray((np.random.default_rng(1).random((40, 50, 3)) * 255).astype(np.uint8))
    maps = [explain(predictor, image, c, TARGETS["vision_transformer"]).heatmap for c in ("a", "b")]
    assert all(m.shape == (32, 32) and m.min() >= 0 and m.max() == pytest.approx(1.0) for m in maps)
    assert not np.allclose(maps[0], maps[1])
    assert cam_target("vit_b_16") is TARGETS["vision_transformer"] and cam_target("swin_t").reshape is not None


SMALLEST_PER_FAMILY = ["alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "googlenet", "inception_v3", "maxvit_t",
                       "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_y_400mf", "resnet18",
                       "shufflenet_v2_x0_5", "squeezenet1_1", "swin_t", "vgg11", "vit_b_16"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALLEST_PER_FAMILY)
def test_grad_cam_runs_for_each_family(name):
    from tl_core.models import backbones
    from tl_core.models.backbones import preprocessing_of, replace_head

    model = backbones.bare(name)
    backbones._drop_aux(model)
    replace_head(model, 2)
    prep = preprocessing_of(backbones.pick_weights(name))
    predictor = Predictor(model, ["a", "b"], prep, torch.device("cpu"), name)
    image = Image.fromarray((np.random.default_rng(2).random((300, 260, 3)) * 255).astype(np.uint8))
    e = explain(predictor, image)
    assert e.heatmap.shape == (prep.crop, prep.crop) and np.isfinite(e.heatmap).all()
    assert 0 <= e.heatmap.min() and e.heatmap.max() <= 1
