"""Shared fixtures: an isolated TL Studio home, the real weights from ../shared/data when present, small datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
HYMENOPTERA = SHARED / "datasets" / "hymenoptera_data"
MOBILENET_FILE = SHARED / "weights" / "mobilenet_v2_qnnpack_dequantized-93d7100e.pth"


@pytest.fixture(scope="session", autouse=True)
def studio_home(tmp_path_factory) -> Path:
    """Caches (demo, embeddings, speeds) in a per-session folder; TORCH_HOME empty unless a test links weights."""
    home = tmp_path_factory.mktemp("tl_home")
    os.environ["TL_STUDIO_HOME"] = str(home)
    os.environ["TORCH_HOME"] = str(tmp_path_factory.mktemp("torch_home"))
    os.environ["TL_STUDIO_RUNS"] = str(home / "runs")
    return home


@pytest.fixture(scope="session")
def real_weights(tmp_path_factory) -> Path:
    """TORCH_HOME holding the genuine MobileNetV2 ImageNet file under torchvision's own file name."""
    if not MOBILENET_FILE.exists():
        pytest.skip("../shared/data is absent: no real pretrained weights here")
    torch_home = tmp_path_factory.mktemp("torch_home_real")
    ckpt = torch_home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "mobilenet_v2-b0353104.pth").symlink_to(MOBILENET_FILE)
    return torch_home


@pytest.fixture
def with_real_weights(real_weights, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(real_weights))
    return real_weights


@pytest.fixture(scope="session")
def own_weights(tmp_path_factory) -> Path:
    """A user's own weight file (a random-initialised mobilenet_v3_small as safetensors): a frozen backbone of own
    weights may be trained on, where one of no weights at all is refused as unable to learn."""
    from safetensors.torch import save_file

    from tl_core.models import backbones

    path = tmp_path_factory.mktemp("own_weights") / "mobilenet_v3_small.safetensors"
    save_file({k: v.contiguous() for k, v in backbones.bare("mobilenet_v3_small").state_dict().items()}, path)
    return path


def solid(path: Path, colour, size=(40, 30), mode="RGB", fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, fmt)
    return path


@pytest.fixture
def shapes_folder(tmp_path) -> Path:
    """Class folders only (no split folders): 3 classes x 10 small pictures, plus junk to be skipped."""
    from tl_core.data.demo import draw

    rng = np.random.default_rng(1)
    root = tmp_path / "shapes"
    for kind in ("circle", "square", "triangle"):
        (root / kind).mkdir(parents=True)
        for i in range(10):
            draw(kind, rng, 48).save(root / kind / f"{i}.png")
    (root / "circle" / ".DS_Store").write_bytes(b"\0\0")
    (root / "square" / "notes.txt").write_text("not an image")
    (root / "triangle" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return root
