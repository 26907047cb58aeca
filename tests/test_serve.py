"""The prediction API, served for real by uvicorn on a free loopback port in a thread: answers, batching under
concurrent clients, hostile uploads, the token rule. One tiny feature-extraction run with the real MobileNetV2
weights (skipped cleanly without ../shared/data)."""

import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import uvicorn
from helpers import torch_home

from tl_core.cli.main import main
from tl_core.config import TrainConfig
from tl_core.data.demo import draw
from tl_core.train.trainer import train
from tl_core.use.predict import Predictor
from tl_core.use.serve import MAX_BODY_BYTES, create_app, token_for


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory, real_weights) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("shapes")
    for kind in ("circle", "square"):
        (root / kind).mkdir()
        for i in range(12):
            draw(kind, rng, 48).save(root / kind / f"{i}.png")
    with torch_home(real_weights):
        result = train(str(root), TrainConfig(strategy="features", epochs=1, image_size=64, seed=0), tmp_path_factory.mktemp("runs"))
    return Path(result.run_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    def __init__(self, run: Path, **kwargs):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(run, device="cpu", **kwargs), "127.0.0.1", port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def api(shapes_run):
    served = Served(shapes_run, batch_wait_s=0.2)  # a long window: concurrent requests surely share a batch
    yield served
    served.stop()


def png(kind: str, seed: int) -> bytes:
    out = io.BytesIO()
    draw(kind, np.random.default_rng(seed), 60).save(out, "PNG")
    return out.getvalue()


def test_predict_answers_what_predict_json_prints(api, shapes_run, tmp_path):
    pictures = {"c.png": png("circle", 100), "s.png": png("square", 101)}
    reply = requests.post(api.url + "/predict", files=[("file", (n, b, "image/png")) for n, b in pictures.items()], timeout=60)
    assert reply.status_code == 200, reply.text
    answers = reply.json()
    predictor = Predictor.from_run(shapes_run, "cpu")
    for n, b in pictures.items():
        (tmp_path / n).write_bytes(b)
    expected = predictor.predict([str(tmp_path / n) for n in pictures], 3)
    assert [a["file"] for a in answers] == ["c.png", "s.png"]
    for a, p in zip(answers, expected):
        assert a["top"][0][0] == p.top[0][0] and a["answer"] == p.answer(predictor.threshold)
        assert dict(map(tuple, a["top"])) == pytest.approx(dict(p.top), abs=1e-3)
    one = requests.post(api.url + "/predict?top_k=1", files={"file": ("../../etc/passwd", pictures["c.png"])}, timeout=60).json()
    assert one[0]["file"] == "passwd" and len(one[0]["top"]) == 1  # a name is text, cut to its last part


def test_health_and_openapi(api):
    health = requests.get(api.url + "/health", timeout=10).json()
    assert health["status"] == "ok" and health["classes"] == ["circle", "square"]
    schema = requests.get(api.url + "/openapi.json", timeout=10).json()
    assert schema["openapi"].startswith("3.") and {"/predict", "/health"} <= set(schema["paths"])


def test_concurrent_requests_share_batches(api):
    before = requests.get(api.url + "/health", timeout=10).json()

    def post(i: int) -> int:
        return requests.post(api.url + "/predict", files={"file": (f"{i}.png", png("circle", i))}, timeout=60).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(post, range(16)))
    after = requests.get(api.url + "/health", timeout=10).json()
    assert codes == [200] * 16
    assert after["requests"] - before["requests"] == 16 and after["batches"] - before["batches"] < 16
    assert after["largest_batch"] > 1


def test_bad_and_huge_uploads_get_one_line_4xx_and_the_server_stays_up(api):
    cases = [
        ({"file": ("notes.txt", b"not a picture at all")}, 400, "notes.txt: not an image"),
        ({"other": ("x.png", png("circle", 1))}, 400, "no picture"),
        ({"file": ("big.png", b"\0" * (MAX_BODY_BYTES + 10))}, 413, "too large"),
    ]
    for files, status, words in cases:
        reply = requests.post(api.url + "/predict", files=files, timeout=60)
        error = reply.json()["error"]
        assert reply.status_code == status and words in error and "\n" not in error
    assert requests.post(api.url + "/predict?top_k=zero", files={"file": ("a.png", png("circle", 2))}, timeout=60).status_code == 400
    garbage = requests.post(api.url + "/predict", data=b"garbage", headers={"content-type": "multipart/form-data"}, timeout=60)
    assert garbage.status_code == 400
    assert requests.get(api.url + "/health", timeout=10).status_code == 200


def test_an_exposed_address_needs_a_token_and_the_token_is_checked(shapes_run, monkeypatch, capsys):
    monkeypatch.delenv("TL_STUDIO_API_TOKEN", raising=False)
    with pytest.raises(ValueError, match="set a token"):
        token_for("0.0.0.0", None)
    assert token_for("127.0.0.1", None) is None and token_for("0.0.0.0", "s3cret") == "s3cret"
    assert main(["serve", str(shapes_run), "--host", "0.0.0.0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "set a token" in err[0]
    served = Served(shapes_run, token="s3cret")
    try:
        files = {"file": ("a.png", png("square", 3))}
        assert requests.post(served.url + "/predict", files=files, timeout=60).status_code == 401
        wrong = requests.post(served.url + "/predict", files=files, headers={"Authorization": "Bearer nope"}, timeout=60)
        assert wrong.status_code == 401 and "token" in wrong.json()["error"]
        right = requests.post(served.url + "/predict", files=files, headers={"Authorization": "Bearer s3cret"}, timeout=60)
        assert right.status_code == 200 and right.json()[0]["top"]
    finally:
        served.stop()
