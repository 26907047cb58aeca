"""Grad-CAM target layers: one for every backbone family in the registry."""

from __future__ import annotations


def test_every_backbone_family_has_a_grad_cam_layer():
    from tl_core.models.backbones import list_backbones
    from tl_core.models.cam_targets import TARGETS, family_of

    assert {family_of(b.name) for b in list_backbones()} <= set(TARGETS)
