"""The backbone registry: torchvision's models with real metadata, new heads, strategies, safe weight files."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from tl_core.models import backbones


def test_registry_comes_from_torchvision_with_real_metadata():
    rows = backbones.list_backbones()
    names = {r.name for r in rows}
    assert len(rows) >= 70 and {"resnet18", "mobilenet_v2", "vit_b_16", "efficientnet_b0"} <= names
    r18 = next(r for r in rows if r.name == "resnet18")
    assert r18.family == "resnet" and 11 < r18.params_m < 12 and r18.acc1 == pytest.approx(69.758)
    assert r18.input_size == 224 and r18.weight_file.startswith("resnet18-") and r18.cached is False


def test_cached_weights_are_detected_and_preferred(with_real_weights):
    info = backbones.describe("mobilenet_v2")
    assert info.cached and info.weights.endswith("IMAGENET1K_V1") and info.acc1 == pytest.approx(71.878)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5",
                                  "efficientnet_b0", "googlenet", "regnet_x_400mf", "vit_b_16", "alexnet"])
def test_every_family_gets_a_new_head(name):
    model, head, prep = backbones.build(name, 3, pretrained=False)
    model.eval()
    size = prep.crop
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, 3)
    assert len(backbones.stages(model, head)) >= 3


def test_strategies_choose_what_trains():
    model, head, _ = backbones.build("resnet18", 4, pretrained=False)
    trainable = lambda: {n.rsplit(".", 1)[0] for n, p in model.named_parameters() if p.requires_grad}  # noqa: E731
    backbones.apply_strategy(model, head, "features")
    assert trainable() == {"fc"}
    backbones.apply_strategy(model, head, "finetune", 2)
    assert all(n == "fc" or n.startswith("layer4") for n in trainable()) and any(n.startswith("layer4.0") for n in trainable())
    backbones.apply_strategy(model, head, "full")
    assert all(p.requires_grad for p in model.parameters())
    backbones.apply_strategy(model, head, "features")
    model.train()
    backbones.freeze_batchnorm(model)
    assert not model.bn1.training and not model.layer4[1].bn2.training


def test_fine_tuning_keeps_batchnorm_statistics_unless_told_not_to():
    model, head, _ = backbones.build("resnet18", 4, pretrained=False)
    backbones.apply_strategy(model, head, "full")
    model.train()
    backbones.freeze_batchnorm(model)  # everything learns: batch statistics everywhere
    assert model.bn1.training and model.layer4[1].bn2.training
    backbones.freeze_batchnorm(model, learning_too=True)  # ImageNet statistics kept, scale and shift still learn
    assert not model.bn1.training and not model.layer4[1].bn2.training and model.bn1.weight.requires_grad
    before = model.bn1.running_mean.clone()
    model(torch.randn(4, 3, 64, 64)).sum().backward()
    assert torch.equal(model.bn1.running_mean, before) and model.bn1.weight.grad is not None


def test_missing_weights_name_the_file_and_folder():
    with pytest.raises(backbones.WeightsUnavailable) as e:
        backbones.build("resnet18", 2)
    msg = str(e.value)
    assert "resnet18-f37072fd.pth" in msg and os.environ["TORCH_HOME"] in msg and "from scratch" in msg


def test_user_weight_files_load_safely(tmp_path):
    model, head, _ = backbones.build("resnet18", 5, pretrained=False)
    good = tmp_path / "mine.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, good)
    other, head2, _ = backbones.build("resnet18", 5, pretrained=False, weights_path=str(good))
    assert torch.equal(other.layer3[0].conv1.weight, model.layer3[0].conv1.weight)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(ValueError, match="not a loadable weight file"):
        backbones.load_weight_file(evil)
    assert not marker.exists()

    wrong = tmp_path / "wrong.pth"
    torch.save(backbones.build("mobilenet_v3_small", 5, pretrained=False)[0].state_dict(), wrong)
    with pytest.raises(ValueError, match="wrong architecture"):
        backbones.build("resnet18", 5, pretrained=False, weights_path=str(wrong))


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


def test_a_pickle_in_the_weight_cache_is_one_line_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    cached = tmp_path / "hub" / "checkpoints"  # torchvision's cache under TORCH_HOME
    cached.mkdir(parents=True)
    (cached / "resnet18-f37072fd.pth").write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(backbones.WeightsUnavailable) as e:
        backbones.build("resnet18", 2)
    message = str(e.value)
    assert "resnet18-f37072fd.pth in the weight cache is not a plain weight file" in message and "\n" not in message
    assert not marker.exists()
