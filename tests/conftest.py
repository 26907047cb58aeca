"""Shared fixtures: an isolated TL Studio home, the real weights from ../shared/data when present, small datasets,
trained runs shared by several files, a fresh home for page tests and a `streamlit run` server for browser tests.
Plain helpers and constants live in helpers.py (imported by `from helpers import ...`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from helpers import HYMENOPTERA, MOBILENET_FILE, ROOT, SHARED, edge_pictures, solid, streamlit_server, torch_home

__all__ = ["HYMENOPTERA", "MOBILENET_FILE", "ROOT", "SHARED", "solid"]


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


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A TL Studio home of this test's own, so uploads/ starts empty."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("TL_STUDIO_HOME", str(h))
    return h


@pytest.fixture
def ui(tmp_path, monkeypatch, studio_home):
    """Fresh runs folder and preferences for each test; the demo images are shared."""
    home = tmp_path / "home"
    home.mkdir()
    from tl_core.data.demo import demo_root

    (home / "demo-v1").symlink_to(demo_root())
    monkeypatch.setenv("TL_STUDIO_HOME", str(home))
    monkeypatch.setenv("TL_STUDIO_RUNS", str(tmp_path / "runs"))
    st.cache_data.clear()
    st.cache_resource.clear()
    yield tmp_path
    from app_pages.ui.shared import job_manager

    jobs = job_manager()
    if jobs.active():
        jobs.stop()
        jobs.wait(jobs.active(), 60)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, real_weights):
    """The demo, MobileNetV2's fitted feature head (real weights): trained once for the predict and export tests."""
    from tl_core.config import TrainConfig
    from tl_core.train.trainer import train

    with torch_home(real_weights):
        return train("demo", TrainConfig(epochs=4), tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="session")
def bees_run(tmp_path_factory, real_weights):
    """One short fine-tuning run on ants vs bees with the real MobileNetV2 weights, shared by the calibration,
    Grad-CAM, batch predict and export tests (skipped cleanly without ../shared/data)."""
    from tl_core.config import TrainConfig
    from tl_core.train.trainer import train

    if not HYMENOPTERA.exists():
        pytest.skip("../shared/data is absent: no ants vs bees photos here")
    with torch_home(real_weights):
        # a fine-tuned network (label smoothing leaves it under-confident): what calibration is for; the fitted
        # feature head is a logistic regression, calibrated already
        config = TrainConfig(strategy="full", epochs=2, image_size=128, seed=0)
        result = train(str(HYMENOPTERA), config, tmp_path_factory.mktemp("runs"))
    assert result.best_val_accuracy > 0.8
    return Path(result.run_dir)


@pytest.fixture(scope="session")
def letterbox_run(tmp_path_factory, real_weights) -> Path:
    """A fitted feature head (real MobileNetV2 weights, 96 px) trained with `fit` letterbox on wide pictures whose
    class sits at their edges (`edge_pictures`): shared by the predict and export tests."""
    from tl_core.config import TrainConfig
    from tl_core.train.trainer import train

    data = edge_pictures(tmp_path_factory.mktemp("edges"), {"train": 30, "val": 20})
    with torch_home(real_weights):
        result = train(str(data), TrainConfig(strategy="features", fit="letterbox", image_size=96, seed=0),
                       tmp_path_factory.mktemp("runs"))
    assert result.best_val_accuracy > 0.9
    return Path(result.run_dir)


@pytest.fixture(scope="session")
def bees_features_run(tmp_path_factory, real_weights) -> Path:
    """A fitted-head run (frozen MobileNetV2, real ImageNet weights) on ants vs bees at 128 px, shared by the predict
    and export tests (skipped cleanly without ../shared/data)."""
    from tl_core.config import TrainConfig
    from tl_core.train.trainer import train

    if not HYMENOPTERA.exists():
        pytest.skip("../shared/data is absent: no ants vs bees photos here")
    with torch_home(real_weights):
        result = train(str(HYMENOPTERA), TrainConfig(strategy="features", image_size=128, seed=0), tmp_path_factory.mktemp("bees"))
    assert result.best_val_accuracy > 0.85
    return Path(result.run_dir)


@pytest.fixture
def server(tmp_path, studio_home):
    """`streamlit run` on a free port with a fresh home and runs folder: the browser tests' server."""
    from tl_core.data.demo import demo_root

    home = tmp_path / "home"
    home.mkdir()
    (home / "demo-v1").symlink_to(demo_root())
    env = {**os.environ, "TL_STUDIO_HOME": str(home), "TL_STUDIO_RUNS": str(tmp_path / "runs"),
           "TORCH_HOME": str(tmp_path / "torch"),
           "OMP_NUM_THREADS": "1"}  # on a shared, busy CI machine two spinning torch threads train 15x slower than one
    with streamlit_server(tmp_path, env) as (url, _, _):
        yield url
