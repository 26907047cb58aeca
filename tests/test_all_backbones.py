"""Slow suite (`python -m pytest -m slow`): every listed backbone gets a working new head and stages."""

import pytest
import torch

from tl_core.models import backbones


@pytest.mark.slow
@pytest.mark.parametrize("name", [b.name for b in backbones.list_backbones()])
def test_every_backbone_builds_with_a_new_head(name):
    model, head, prep = backbones.build(name, 7, pretrained=False)
    layer = model.get_submodule(head)
    assert getattr(layer, "out_features", getattr(layer, "out_channels", None)) == 7
    assert len(backbones.stages(model, head)) >= 2
    backbones.apply_strategy(model, head, "finetune", 2)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in model.parameters())
    if sum(p.numel() for p in model.parameters()) < 40e6:  # forward only where it is cheap
        with torch.no_grad():
            assert model.eval()(torch.randn(1, 3, prep.crop, prep.crop)).shape == (1, 7)
