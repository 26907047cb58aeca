"""Issue 8: every hostile input and fault, one test per row, each with its own tiny fixture."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import threading
import warnings
import zipfile
import zlib
from dataclasses import asdict
from pathlib import Path

import pytest
import streamlit as st
import torch
from conftest import ROOT, solid
from streamlit.testing.v1 import AppTest

from tl_core.cli import main as cli
from tl_core.data.images import BadImage, content_hash, open_rgb
from tl_core.data.scan import scan
from tl_core.data.sources import DatasetError, DatasetSpec, from_folder, from_zip, save_upload, uploads_dir
from tl_core.train.runs import (
    RUNNING,
    Run,
    RunBroken,
    RunBusy,
    RunLock,
    delete_run,
    latest_finished,
    list_runs,
    load_trainer_state,
    process_start,
    save_state,
    save_trainer_state,
)

BACKBONE = "mobilenet_v3_small"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A TL Studio home of this test's own, so uploads/ starts empty."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("TL_STUDIO_HOME", str(h))
    return h


def png_bytes(colour=(200, 30, 30), size=(8, 8)) -> bytes:
    from PIL import Image

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


def finishes(fn, timeout: float = 10):
    """Run `fn` in a thread: (finished in time, its result or exception). Old code blocked forever on a FIFO."""
    out: list = []

    def target():
        try:
            out.append(fn())
        except Exception as e:
            out.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    return (not t.is_alive()), (out[0] if out else None)


def fake_run(root: Path, classes: list[str], weight_classes: int | None = None, meta_classes: list[str] | None = None,
             val: list[tuple[str, int]] = ()) -> Path:
    """A finished run on disk with random weights: enough to predict, evaluate and export without training."""
    from tl_core.models import backbones
    from tl_core.models.backbones import Preprocessing

    run = root / "20260101-000000-fake-0000"
    run.mkdir(parents=True)
    model = backbones.bare(BACKBONE)
    head = backbones.replace_head(model, weight_classes or len(classes))
    save_state(run / "best.safetensors", model.state_dict(), classes=meta_classes)
    (run / "run.json").write_text(json.dumps({
        "id": run.name, "config": {"backbone": BACKBONE, "strategy": "full"}, "classes": classes, "head": head,
        "preprocessing": asdict(Preprocessing.imagenet(32))}))
    (run / "summary.json").write_text(json.dumps({"status": "finished", "best_val_accuracy": 0.5}))
    (run / "split.json").write_text(json.dumps({"val": [list(v) for v in val]}))
    return run


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------- security


def test_row01_zip_bomb_refused_before_extracting_and_uploads_bounded(home, monkeypatch):
    bomb = zip_bytes({f"c{i % 2}/{i}.png": bytes(1 << 20) for i in range(20)})  # 20 MB of zeros in ~20 KB
    assert len(bomb) < 100_000
    saved = save_upload("bomb.zip", bomb)
    with pytest.raises(DatasetError, match="zip bomb"):
        from_zip(saved)
    assert list(uploads_dir().iterdir()) == []  # nothing extracted, the refused upload removed

    monkeypatch.setenv("TL_STUDIO_UPLOADS_GB", "1e-9")  # room for one upload only
    first = save_upload("a.zip", dataset_zip(["x", "y"]))
    assert from_zip(first).classes == ["x", "y"]
    second = save_upload("b.zip", dataset_zip(["p", "q"]))
    assert from_zip(second).classes == ["p", "q"]
    digest = second.parent.name  # the oldest upload is evicted with its extraction
    assert {p.name for p in uploads_dir().iterdir()} == {digest, f"b-{digest}"}


def test_row02_links_out_of_the_root_and_special_files_are_listed_not_read(tmp_path):
    outside = tmp_path / "outside"
    solid(outside / "secret.png", (1, 2, 3))
    solid(outside / "cls" / "leak.png", (3, 2, 1))
    root = tmp_path / "data" / "ds"
    for c in ("cat", "dog"):
        for i in range(3):
            solid(root / c / f"{i}.png", (60 * i, 30, 90))
    (root / "dog" / "secret.png").symlink_to(outside / "secret.png")
    (root / "evil").symlink_to(outside / "cls", target_is_directory=True)
    os.mkfifo(root / "cat" / "pipe.png")

    done, ds = finishes(lambda: from_folder(root))
    assert done and not isinstance(ds, Exception), ds
    assert len(ds.samples) == 6 and all(Path(s.path).resolve().is_relative_to(root.resolve()) for s in ds.samples)
    reasons = {Path(p.path).name: p.reason for p in ds.skipped}
    assert "links outside the dataset folder" in reasons["secret.png"]
    assert "links outside the dataset folder" in reasons["evil"]
    assert reasons["pipe.png"] == "not a regular file (a FIFO)"
    assert finishes(lambda: scan(DatasetSpec(str(root))))[0]
    for fn in (content_hash, open_rgb):
        done, result = finishes(lambda fn=fn: fn(root / "cat" / "pipe.png"))
        assert done and isinstance(result, BadImage) and "not a regular file" in str(result)


# ---------------------------------------------------------------- data integrity and faults


def test_row04_trainer_state_is_atomic_and_a_bad_file_reads_as_none(tmp_path):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))])
    opt.step()
    save_trainer_state(tmp_path, {"optimizer": opt.state_dict(), "epoch": 2})
    state = load_trainer_state(tmp_path)
    assert state["epoch"] == 2 and state["optimizer"]["param_groups"][0]["lr"] == opt.param_groups[0]["lr"]
    assert [p.name for p in tmp_path.iterdir()] == ["trainer_state.pt"]  # no temporary file left

    good = (tmp_path / "trainer_state.pt").read_bytes()
    for bad in (b"", good[: len(good) // 2]):  # killed mid-write by the old code; cut short
        (tmp_path / "trainer_state.pt").write_bytes(bad)
        assert load_trainer_state(tmp_path) is None
    (tmp_path / "trainer_state.pt").unlink()
    assert load_trainer_state(tmp_path) is None


class Tripwire:
    """A pickle that would create a file if it were ever unpickled."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


HOLD_LOCK = """
import sys, time
from tl_core.train.runs import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_row05_one_writer_per_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):
        with pytest.raises(RunBusy, match="being written by process"):
            with RunLock(run):
                pass
        owner = json.loads((run / "writer.lock").read_text())
        assert owner == {"pid": os.getpid(), "pid_start": process_start(os.getpid())}
    assert not (run / "writer.lock").exists()

    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunBusy, match=f"process {holder.pid}"):  # another live process writes the run
            with RunLock(run):
                pass
    finally:
        holder.kill()
        holder.wait()
    with RunLock(run):  # killed without releasing: its lock is taken over
        pass

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for stale in ({"pid": dead.pid, "pid_start": None}, {"pid": os.getpid(), "pid_start": -5}):  # dead; pid reused
        (run / "writer.lock").write_text(json.dumps(stale))
        with RunLock(run):
            assert json.loads((run / "writer.lock").read_text())["pid"] == os.getpid()


def test_row06_a_run_is_running_only_while_its_writer_holds_the_lock(tmp_path, capsys):
    run = fake_run(tmp_path, ["a", "b"])
    with RunLock(run):
        Run(run).write_summary(status=RUNNING)  # this live process writes it: really running
        assert Run(run).summary["status"] == RUNNING
        with pytest.raises(RuntimeError, match="still training"):
            delete_run(Run(run))
    assert Run(run).summary["status"] == "interrupted"  # the pid is still alive, but nobody writes the run
    assert run_cli(capsys, "runs", "--runs-dir", str(tmp_path), "--delete", run.name)[0] == 0
    assert not run.exists()


def test_row08_a_corrupt_run_json_is_listed_as_broken(tmp_path, capsys):
    good = fake_run(tmp_path, ["a", "b"])
    broken = tmp_path / "20270101-000000-broken-0000"
    broken.mkdir()
    (broken / "run.json").write_text('{"config": {"backbone": ')
    (broken / "best.safetensors").write_bytes((good / "best.safetensors").read_bytes())
    runs = list_runs(tmp_path)
    assert [r.id for r in runs] == [broken.name, good.name]
    assert runs[1].broken is None and str(broken / "run.json") in runs[0].broken
    with pytest.raises(RunBroken, match="run.json is unreadable"):
        _ = runs[0].info
    assert latest_finished(tmp_path).id == good.name
    code, out, _ = run_cli(capsys, "runs", "--runs-dir", str(tmp_path))
    assert code == 0 and good.name in out and f"{broken.name}  broken" in out and "delete the run" in out
    code, out, _ = run_cli(capsys, "runs", "--runs-dir", str(tmp_path), "--json")
    assert [r["status"] for r in json.loads(out)] == ["broken", "finished"]


def test_row09_dataset_page_keys_uploads_by_content(tmp_path, monkeypatch, home):
    tiny = tmp_path / "tiny"
    for c in ("u", "v"):
        for i in range(2):
            solid(tiny / c / f"{i}.png", (90 * i, 20, 40))
    (home / "prefs.json").write_text(json.dumps({"dataset": str(tiny)}))
    monkeypatch.setenv("TL_STUDIO_RUNS", str(tmp_path / "runs"))
    st.cache_data.clear()
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()
    at.switch_page("app_pages/1_Dataset.py").run()
    at.radio(key="dataset_kind").set_value("Upload a .zip").run()
    for classes in (["a", "b"], ["a", "b", "c"]):  # the same file name, new bytes
        at.file_uploader(key="zip_upload").set_value(("data.zip", dataset_zip(classes), "application/zip")).run()
        at.button(key="use_zip").click().run()
        assert not at.exception, at.exception
        assert {m.label: m.value for m in at.metric}["Classes"] == str(len(classes))


def test_row11_class_names_in_the_weights_refuse_a_reordered_run_json(tmp_path):
    from tl_core.use.export import export
    from tl_core.use.predict import Predictor

    run = fake_run(tmp_path, ["ant", "bee"], meta_classes=["ant", "bee"])
    assert Predictor.from_run(run, "cpu").classes == ["ant", "bee"]
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "classes": ["bee", "ant"]}))
    for action in (lambda: Run(run).model_state(), lambda: export(run, tmp_path / "m.zip")):
        with pytest.raises(RunBroken) as e:
            action()
        assert str(run / "best.safetensors") in str(e.value) and "\n" not in str(e.value)
        assert "output 0 is 'ant' in the weights but 'bee' in run.json" in str(e.value)
    assert not (tmp_path / "m.zip").exists()


# ---------------------------------------------------------------- clear messages, nothing left behind


def encrypted_zip() -> bytes:
    """zipfile cannot encrypt, but the flag bit is all a reader sees before asking for the password."""
    data = bytearray(zip_bytes({"a/0.png": png_bytes(), "b/0.png": png_bytes((0, 0, 255))}))
    local = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("b/0.png").header_offset
    central = data.rindex(b"PK\x01\x02")  # the last central-directory entry: b/0.png
    for flag_at in (local + 6, central + 8):
        data[flag_at] |= 0x1
    return bytes(data)


def bad_crc_zip() -> bytes:
    data = zip_bytes({"a/0.png": png_bytes(), "b/0.txt": b"hello-data" * 10}, zipfile.ZIP_STORED)
    return data.replace(b"hello-data", b"jello-data", 1)


def clash_zip() -> bytes:
    return zip_bytes({"a/0.png": png_bytes(), "b": b"a file", "b/0.png": png_bytes((0, 0, 255))})


BAD_ZIPS = {"password-protected": encrypted_zip, "damaged": bad_crc_zip, "both a file and a folder": clash_zip}


def test_row12_encrypted_bad_crc_and_clashing_zips_are_one_clear_line(home, tmp_path, capsys, monkeypatch):
    for words, make in BAD_ZIPS.items():
        archive = tmp_path / "data.zip"
        archive.write_bytes(make())
        with pytest.raises(DatasetError, match=words):
            from_zip(archive)
        assert not uploads_dir().exists() or not any(uploads_dir().iterdir())  # no partial extraction
        code, out, err = run_cli(capsys, "scan", str(archive))
        assert code == 1 and words in err and err.count("\n") == 1 and "Traceback" not in err

    (home / "prefs.json").write_text(json.dumps({"dataset": str(tmp_path / "none")}))
    monkeypatch.setenv("TL_STUDIO_RUNS", str(tmp_path / "runs"))
    st.cache_data.clear()
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()
    at.switch_page("app_pages/1_Dataset.py").run()
    at.radio(key="dataset_kind").set_value("Upload a .zip").run()
    from app_pages.ui.shared import plain

    for words, make in BAD_ZIPS.items():  # the Dataset page: the same line, no traceback, nothing kept
        at.file_uploader(key="zip_upload").set_value(("data.zip", make(), "application/zip")).run()
        at.button(key="use_zip").click().run()
        assert not at.exception and any(plain(words) in e.value and "\n" not in e.value for e in at.error)  # as plain text
        assert not any(uploads_dir().iterdir())


def test_row13_checkpoint_errors_are_one_line_naming_the_file(tmp_path, capsys):
    from tl_core.use.predict import Predictor

    run = fake_run(tmp_path, ["a", "b", "c"], weight_classes=2)  # an old checkpoint, without class names
    with pytest.raises(ValueError) as e:
        Predictor.from_run(run, "cpu")
    message = str(e.value)
    assert str(run / "best.safetensors") in message and "3 classes" in message and "\n" not in message
    (run / "best.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(RunBroken, match="not a readable safetensors file") as e:
        Run(run).model_state()
    assert str(run / "best.safetensors") in str(e.value)

    torch.save({"optimizer": Tripwire(tmp_path / "pwned")}, run / "trainer_state.pt")
    assert load_trainer_state(run) is None and not (tmp_path / "pwned").exists()
    out = capsys.readouterr()
    assert "weights_only" not in out.out + out.err


def test_row14_scan_without_usable_images_and_top_k_validated(tmp_path, capsys):
    junk = tmp_path / "junk"
    for c in ("a", "b"):
        (junk / c).mkdir(parents=True)
        (junk / c / "notes.txt").write_text("not an image")
    code, out, err = run_cli(capsys, "scan", str(junk))
    assert code == 1 and "no usable image" in err and "notes.txt" in out and "not iterable" not in err

    image = solid(tmp_path / "x.png", (10, 200, 10), (40, 40))
    run = fake_run(tmp_path / "runs", ["a", "b"])
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit) as e:
            cli.main(["predict", str(run), str(image), "--top-k", bad])
        assert e.value.code == 2 and "--top-k" in capsys.readouterr().err
    code, out, _ = run_cli(capsys, "predict", str(run), str(image), "--top-k", "5", "--json")
    assert code == 0 and len(json.loads(out)[0]["top"]) == 2  # clamped to the run's classes


def huge_png_header(path: Path, side: int = 20_000) -> Path:
    """A valid 1x1 PNG whose header claims side x side pixels (the CRC fixed so Pillow trusts it)."""
    data = bytearray(png_bytes(size=(1, 1)))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", side, side)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def test_row16_no_marker_problem_and_huge_images_too_large_quietly(home, tmp_path, capfd):
    archive = tmp_path / "set.zip"
    archive.write_bytes(dataset_zip(["a", "b"]))
    for _ in range(2):  # extracted, then reused
        report = scan(DatasetSpec(str(archive)))
        assert report.n_images == 6 and report.problems == []

    root = tmp_path / "big"
    for c in ("a", "b"):
        for i in range(2):
            solid(root / c / f"{i}.png", (90 * i, 20, 40))
    huge = huge_png_header(root / "a" / "huge.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = scan(DatasetSpec(str(root)))
    reasons = {p.path: p.reason for p in report.problems}
    assert reasons[str(huge)].startswith("too large to decode safely (20000x20000 pixels")
    assert not [w for w in caught if w.category is not ResourceWarning]  # Pillow's DecompressionBombWarning
    assert "Warning" not in "".join(capfd.readouterr())


def test_row17_evaluate_text_lists_unreadable_val_images(tmp_path, capsys):
    good = solid(tmp_path / "imgs" / "good.png", (200, 10, 10), (40, 40))
    corrupt = tmp_path / "imgs" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    missing = tmp_path / "imgs" / "gone.png"
    run = fake_run(tmp_path / "runs", ["a", "b"], val=[(str(good), 0), (str(corrupt), 1), (str(missing), 1)])
    code, out, _ = run_cli(capsys, "evaluate", str(run), "--device", "cpu")
    assert code == 0 and "unreadable images, not counted (2)" in out
    assert f"{corrupt}:" in out and f"{missing}:" in out


# ---------------------------------------------------------------- rows wired into the training loop

TINY_RUN = dict(backbone="mobilenet_v3_small", pretrained=False, strategy="full", image_size=48, batch_size=16, patience=0)


def _few(root: Path, classes=("red", "blue"), n: int = 4) -> Path:
    for k, cls in enumerate(classes):
        for i in range(n):
            solid(root / cls / f"{i}.png", (40 + 150 * k, 20 * i, 200 - 150 * k), size=(48, 48))
    return root


def test_row04_a_kill_mid_write_of_the_trainer_state_still_resumes(tmp_path):
    from tl_core.config import TrainConfig
    from tl_core.train.trainer import resume, train

    result = train(str(_few(tmp_path / "d")), TrainConfig(**TINY_RUN, epochs=1), tmp_path / "runs")
    (Path(result.run_dir) / "trainer_state.pt").write_bytes(b"")  # what an in-place write killed midway left
    again = resume(result.run_dir, epochs=2)
    assert again.status == "finished" and again.epochs_completed == 2


def test_row05_resuming_a_run_that_is_being_written_is_refused(tmp_path):
    from tl_core.config import TrainConfig
    from tl_core.train.trainer import TrainingError, resume, train

    result = train(str(_few(tmp_path / "d")), TrainConfig(**TINY_RUN, epochs=1), tmp_path / "runs")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from tl_core.train.runs import RunLock\n"
                               "with RunLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", result.run_dir],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TrainingError, match="being written by process"):
            resume(result.run_dir, epochs=2)
        assert [m["epoch"] for m in Run(Path(result.run_dir)).metrics()] == [1]  # nothing written twice
    finally:
        holder.kill()
        holder.wait()


def test_row07_a_run_killed_before_its_first_epoch_restarts_plainly(tmp_path):
    from tl_core.config import TrainConfig
    from tl_core.train.trainer import resume, train

    stop = threading.Event()
    stop.set()  # stopped before anything finished, like a kill during decoding
    first = train(str(_few(tmp_path / "d")), TrainConfig(**TINY_RUN, epochs=1), tmp_path / "runs", stop=stop)
    assert first.epochs_completed == 0 and not Run(Path(first.run_dir)).has_checkpoint()
    lines = []
    again = resume(first.run_dir, [lambda e: lines.append(getattr(e, "message", ""))])
    assert again.status == "finished" and again.epochs_completed == 1
    assert any("Nothing had finished" in m and "from the beginning" in m for m in lines)


def test_row10_classes_come_from_usable_images(tmp_path):
    from tl_core.config import TrainConfig
    from tl_core.data.scan import scan
    from tl_core.data.sources import DatasetSpec
    from tl_core.train.trainer import train

    root = _few(tmp_path / "d", ("red", "blue", "green"))
    for p in (root / "green").iterdir():
        p.write_bytes(b"not a picture")  # every file of one class undecodable
    (root / "empty").mkdir()
    report = scan(DatasetSpec(str(root)))
    assert report.classes == ["blue", "red"]
    assert {p.path for p in report.skipped if "empty class" in p.reason} == {"green", "empty"}
    result = train(str(root), TrainConfig(**TINY_RUN, epochs=1), tmp_path / "runs")
    assert Run(Path(result.run_dir)).classes == ["blue", "red"]  # no dead output for a class with no image


def test_row15_refused_settings_data_or_weights_leave_no_run_folder(tmp_path):
    from tl_core.config import TrainConfig
    from tl_core.train.trainer import TrainingError, train

    data = _few(tmp_path / "d")
    runs = tmp_path / "runs"
    with pytest.raises(ValueError, match="epochs"):
        train(str(data), TrainConfig(**{**TINY_RUN, "epochs": 0}), runs)
    with pytest.raises(TrainingError, match="does not exist"):
        train(str(tmp_path / "missing"), TrainConfig(**TINY_RUN, epochs=1), runs)
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(TrainingError):
        train(str(data), TrainConfig(**{**TINY_RUN, "weights_path": str(bad)}, epochs=1), runs)
    assert not runs.exists() or list(runs.iterdir()) == []


def test_row17_resume_of_a_feature_run_after_a_val_file_was_deleted(tmp_path):
    from tl_core.config import TrainConfig
    from tl_core.train.trainer import resume, train

    data = _few(tmp_path / "d", n=6)
    cfg = TrainConfig(**{**TINY_RUN, "strategy": "features"}, epochs=1)
    result = train(str(data), cfg, tmp_path / "runs")
    gone = Path(Run(Path(result.run_dir)).split("val")[0][0])
    gone.unlink()
    again = resume(result.run_dir)  # once crashed while hashing the missing file, leaving the run "failed"
    assert again.status == "finished" and again.epochs_completed == 1
    assert any(s["path"] == str(gone) for s in Run(Path(result.run_dir)).summary["skipped"])


def test_row18_no_promise_of_kept_epochs_when_there_are_none():
    from tl_core.config import TrainConfig
    from tl_core.train.trainer import explain

    _, none_kept = explain(RuntimeError("boom"), TrainConfig(), has_checkpoint=False)
    _, kept = explain(RuntimeError("boom"), TrainConfig(), has_checkpoint=True)
    assert "keeps its finished epochs" not in none_kept and "nothing was kept" in none_kept
    assert "keeps its finished epochs" in kept
