"""Helpers shared by several test files (plain functions and constants; the fixtures live in conftest.py)."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from importlib.util import find_spec
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
HYMENOPTERA = SHARED / "datasets" / "hymenoptera_data"
MOBILENET_FILE = SHARED / "weights" / "mobilenet_v2_qnnpack_dequantized-93d7100e.pth"
APP = str(ROOT / "streamlit_app.py")

TINY = dict(backbone="mobilenet_v3_small", pretrained=False, strategy="full", image_size=48, batch_size=16, patience=0)
"""A whole small network from scratch on 48-px pictures: the cheapest run that really trains."""


@contextmanager
def torch_home(folder: Path) -> Iterator[None]:
    """TORCH_HOME pointing at `folder` (the real weights) inside the block, as it was after: for session and module
    fixtures, which cannot use monkeypatch."""
    old = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_HOME", None)
        else:
            os.environ["TORCH_HOME"] = old


def solid(path: Path, colour, size=(40, 30), mode="RGB", fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, fmt)
    return path


RED = (220, 20, 20)


def red_at_left(size=(300, 100)) -> Image.Image:
    """A wide grey picture whose only red is a square at its far left edge: a centre crop never sees it."""
    img = Image.new("RGB", size, (128, 128, 128))
    img.paste(RED, (0, 0, size[1], size[1]))
    return img


def edge_pictures(root: Path, per_class: dict[str, int], seed: int = 0, size=(300, 100)) -> Path:
    """Wide pictures whose class is the colour of a square at their left or right edge (red or blue, varied),
    the middle a grey texture the same for both: a centre crop sees only the texture, a letterbox sees the class.
    `per_class`: split -> pictures per class, written as root/split/class/i.png."""
    import numpy as np

    rng = np.random.default_rng(seed)
    w, h = size
    for split, n in per_class.items():
        for name in ("red", "blue"):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                grey = rng.integers(90, 170, (h // 10 + 1, w // 10 + 1, 1)).repeat(3, 2).astype(np.uint8)
                img = Image.fromarray(grey).resize(size, Image.BICUBIC)
                strong, weak = int(rng.integers(170, 256)), int(rng.integers(0, 70))
                colour = (strong, weak, weak) if name == "red" else (weak, weak, strong)
                side = int(h * rng.uniform(0.6, 0.9))
                x = 0 if rng.random() < 0.5 else w - side
                y = int(rng.integers(0, h - side + 1))
                img.paste(colour, (x, y, x + side, y + side))
                img.save(root / split / name / f"{i}.png")
    return root


# ---------------------------------------------------------------- the command line


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m tl_core ...` in a child process, as a script runs it."""
    return subprocess.run([sys.executable, "-m", "tl_core", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=300)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """The command line in this process: (exit code, stdout, stderr)."""
    from tl_core.cli.main import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def cli_out(capsys, *args: str) -> str:
    """The command line in this process, which must succeed: its stdout."""
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    return out


# ---------------------------------------------------------------- small files made on the spot


def png_bytes(colour=(200, 30, 30), size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def zip_bytes(entries: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def dataset_zip(classes: list[str]) -> bytes:
    return zip_bytes({f"{c}/{i}.png": png_bytes((40 * j, 20 * i, 90), (40, 40)) for j, c in enumerate(classes) for i in range(3)})


FAKE_BACKBONE = "mobilenet_v3_small"


def fake_run(root: Path, classes: list[str], weight_classes: int | None = None, meta_classes: list[str] | None = None,
             val: list[tuple[str, int]] = ()) -> Path:
    """A finished run on disk with random weights: enough to predict, evaluate and export without training."""
    from tl_core.models import backbones
    from tl_core.models.backbones import Preprocessing
    from tl_core.train.runs import save_state

    run = root / "20260101-000000-fake-0000"
    run.mkdir(parents=True)
    model = backbones.bare(FAKE_BACKBONE)
    head = backbones.replace_head(model, weight_classes or len(classes))
    save_state(run / "best.safetensors", model.state_dict(), classes=meta_classes)
    (run / "run.json").write_text(json.dumps({
        "id": run.name, "config": {"backbone": FAKE_BACKBONE, "strategy": "full"}, "classes": classes, "head": head,
        "preprocessing": asdict(Preprocessing.imagenet(32))}))
    (run / "summary.json").write_text(json.dumps({"status": "finished", "best_val_accuracy": 0.5}))
    (run / "split.json").write_text(json.dumps({"val": [list(v) for v in val]}))
    return run


def bees_val_files(n: int) -> list[str]:
    """The first n validation photos of ants vs bees, half of each class."""
    files = sorted((HYMENOPTERA / "val" / "ants").iterdir())[: n // 2] + sorted((HYMENOPTERA / "val" / "bees").iterdir())[: n - n // 2]
    return [str(f) for f in files]


# ---------------------------------------------------------------- pages through Streamlit's AppTest


def open_page(page: str | None = None):
    """The app from its entrypoint, switched to `page`, with no exception raised."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def wait_for(at, done, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        at.run()
        if done(at):
            return
        time.sleep(0.5)
    pytest.fail("timed out waiting for the page")


def chart(at, text: str) -> dict:
    """The plotly figure (as the browser gets it) whose spec contains `text`, e.g. its title."""
    return json.loads(next(c.proto.spec for c in at.get("plotly_chart") if text in c.proto.spec))


def tiny_settings(at, epochs: int) -> None:
    """The Train page set to the cheapest run that trains (a small network from scratch on 48-px pictures)."""
    at.checkbox(key="cfg_pretrained").uncheck()
    at.radio(key="cfg_strategy").set_value("full").run()
    at.number_input(key="cfg_epochs").set_value(epochs)
    at.number_input(key="cfg_batch_size").set_value(16)
    at.number_input(key="cfg_image_size").set_value(48)
    at.number_input(key="cfg_patience").set_value(0)
    at.run()


def use_backbone(name: str) -> None:
    from tl_core.dashboard import prefs

    prefs.save(prefs.Choices(backbone=name))


def st_home() -> str:
    return os.environ["TL_STUDIO_HOME"]


# ---------------------------------------------------------------- a real browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / "test-artifacts" / "screenshots"
BROWSER = [pytest.mark.browser, pytest.mark.skipif(not os.path.exists(CHROMIUM) or find_spec("playwright") is None,
                                                   reason="chromium or playwright is not installed")]
"""`pytestmark = BROWSER` in every browser test file: marked, and skipped cleanly without Chromium or Playwright."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_runs(runs_dir: Path, n: int, source: str = "demo") -> list[str]:
    """`n` one-epoch runs of a tiny untrained network, oldest first (run ids are timestamps: a second apart)."""
    from tl_core.config import TrainConfig
    from tl_core.train.trainer import train

    tiny = TrainConfig(backbone="mobilenet_v3_small", pretrained=False, strategy="full", image_size=32, epochs=1, patience=0)
    ids = []
    for i in range(n):
        if i:
            time.sleep(1.1)
        ids.append(Path(train(source, tiny, runs_dir).run_dir).name)
    return ids


@contextmanager
def streamlit_server(log_dir: Path, env: dict[str, str], address: str = "127.0.0.1") -> Iterator[tuple[str, int, Path]]:
    """`streamlit run streamlit_app.py` on a free port, listening on `address`; yields (loopback URL, port, log
    file) once its health check answers, and stops it afterwards."""
    port = free_port()
    log_path = log_dir / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
                             "--server.address", address, "--server.headless", "true"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
            break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("streamlit did not start: " + log_path.read_text()[-2000:])
    try:
        yield url, port, log_path
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
