"""Training end to end on CPU: real outcomes on held-out images, the spec's split, stop/resume, kills, crashes,
bad files, refused settings, the fitted feature head and progressive resizing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
from helpers import HYMENOPTERA, ROOT, TINY, solid
from PIL import Image

from tl_core.config import TrainConfig
from tl_core.data.scan import load_dataset, scan
from tl_core.data.sources import DatasetSpec
from tl_core.features.compare import compare
from tl_core.train.events import EpochEnded, PhaseProgress, PhaseStarted, RunEnded, RunStarted, StepEnded
from tl_core.train.runs import (
    INTERRUPTED,
    Run,
    list_runs,
    load_run,
)
from tl_core.train.trainer import TrainingError, resume, train


def test_demo_end_to_end_beats_chance_by_far(with_real_weights, tmp_path):
    events = []
    result = train("demo", TrainConfig(), tmp_path, [events.append])
    assert result.status == "finished" and result.epochs_completed == 1  # the feature head is fitted, one epoch
    assert result.best_val_accuracy >= 0.7  # 5 classes: chance is 0.2
    kinds = [type(e) for e in events]
    started = kinds.index(RunStarted)
    assert kinds[-1] is RunEnded and kinds.count(EpochEnded) == 1
    assert {PhaseStarted, PhaseProgress, StepEnded} <= set(kinds[started:])
    run = load_run(result.run_dir)
    assert len(run.metrics()) == 1 and run.summary["status"] == "finished" and run.summary["head_fit"]["l2"] > 0
    assert {"backbone.safetensors", "best.safetensors", "last.safetensors", "split.json"} <= {p.name for p in run.dir.iterdir()}


@pytest.mark.skipif(not HYMENOPTERA.exists(), reason="../shared/data is absent")
def test_ants_vs_bees_fast_path_reaches_095(with_real_weights, tmp_path):
    events = []
    result = train(str(HYMENOPTERA), TrainConfig(backbone="mobilenet_v2"), tmp_path, [events.append])
    assert result.best_val_accuracy >= 0.95 and result.epochs_completed == 1  # the head is fitted, not run for epochs
    assert any("chosen by cross-validation on the training split" in getattr(e, "message", "") for e in events)
    assert result.skipped == 0  # the .gif is a real image: it is used, not skipped


def test_scratch_training_fits_its_images(tmp_path):
    """No pretrained weights: the whole network (optimiser, BatchNorm, loss, schedule) must still learn."""
    cfg = TrainConfig(**{**TINY, "backbone": "resnet18"}, epochs=5, augment="none", lr=1e-3)
    rows = load_run(train("demo", cfg, tmp_path).run_dir).metrics()
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.5 and rows[-1]["train_acc"] > 0.8


def test_bad_files_are_skipped_with_reasons(shapes_folder, tmp_path):
    result = train(str(shapes_folder), TrainConfig(**TINY, epochs=1), tmp_path)
    assert result.status == "finished" and result.skipped >= 3
    skipped = {Path(s["path"]).name: s["reason"] for s in load_run(result.run_dir).summary["skipped"]}
    assert "broken.jpg" in skipped and ".DS_Store" in skipped and "notes.txt" in skipped


def test_stop_is_honoured_within_a_step_and_resume_finishes(tmp_path):
    stop = threading.Event()
    steps_after_stop = []

    def listener(e):
        if stop.is_set() and isinstance(e, StepEnded):
            steps_after_stop.append(e)
        if isinstance(e, EpochEnded) and e.row.epoch == 1:
            stop.set()

    result = train("demo", TrainConfig(**TINY, epochs=3), tmp_path, [listener], stop)
    assert result.status == "stopped" and result.epochs_completed == 1 and not steps_after_stop
    run = load_run(result.run_dir)
    assert run.has_checkpoint() and run.summary["status"] == "stopped"
    resumed = resume(run.dir)
    assert resumed.status == "finished" and resumed.epochs_completed == 3
    assert [r["epoch"] for r in run.metrics()] == [1, 2, 3]


def test_a_run_that_cannot_train_says_why_before_making_a_folder(tmp_path, shapes_folder):
    single = tmp_path / "one"
    (single / "circle").mkdir(parents=True)
    for p in list((shapes_folder / "circle").glob("*.png")):
        (single / "circle" / p.name).write_bytes(p.read_bytes())
    with pytest.raises(TrainingError, match="at least two classes") as e:
        train(str(single), TrainConfig(**TINY, epochs=1), tmp_path / "runs")
    assert e.value.run_dir is None and list_runs(tmp_path / "runs") == []  # nothing left behind


def test_a_killed_run_keeps_its_epochs_and_can_resume(tmp_path):
    runs = tmp_path / "runs"
    code = ("import sys; from tl_core.config import TrainConfig; from tl_core.train.trainer import train; "
            "train('demo', TrainConfig(backbone='mobilenet_v3_small', pretrained=False, strategy='full', "
            "image_size=48, batch_size=16, patience=0, epochs=50), sys.argv[1])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(runs)], env=os.environ.copy(),
                            cwd=Path(__file__).parents[1])
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            found = list(runs.glob("*/metrics.jsonl"))
            if found and len(found[0].read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        else:
            pytest.fail("no epoch finished in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run = list_runs(runs)[0]
    assert run.summary["status"] == INTERRUPTED
    done = len(run.metrics())
    assert done >= 2 and run.has_checkpoint()
    json.loads((run.dir / "summary.json").read_text())  # never half-written
    result = resume(run.dir, epochs=done + 1)
    assert result.status == "finished" and result.epochs_completed == done + 1


def test_fitted_head_on_cached_embeddings_is_no_worse_than_running_the_backbone(with_real_weights, tmp_path):
    """The head fitted on cached embeddings against a head trained by SGD with the frozen backbone run every step."""
    from tl_core.use.predict import evaluate

    cfg = dict(backbone="mobilenet_v2", epochs=3, augment="none", seed=3, patience=0, amp=False)
    fast = train("demo", TrainConfig(strategy="features", **cfg), tmp_path / "a")
    slow = train("demo", TrainConfig(strategy="features", embedding_cache=False, **cfg), tmp_path / "b")
    ev_fast, ev_slow = evaluate(fast.run_dir), evaluate(slow.run_dir)
    assert ev_fast.accuracy >= ev_slow.accuracy - 0.02 and ev_fast.accuracy >= 0.9


def test_progressive_resizing_fine_tunes_above_chance_and_says_so(with_real_weights, tmp_path):
    from tl_core.train.events import Logged

    events = []
    cfg = TrainConfig(backbone="mobilenet_v2", strategy="full", image_size=128, epochs=3, batch_size=32, patience=0,
                      progressive_resize=0.5)
    result = train("demo", cfg, tmp_path, [events.append])
    assert "Progressive resizing: training images of 112 / 112 / 120 px by epoch (validation at 128 px)." in [
        e.message for e in events if isinstance(e, Logged)]
    assert result.best_val_accuracy >= 0.6  # 5 classes: chance is 0.2


def small_grey_copy(src, dst, size: int = 28):
    """Ants vs bees as 28 px greyscale: far smaller than the backbone's crop, one channel."""
    for path in src.rglob("*.jpg"):
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("L").resize((size, size)).save(out.with_suffix(".png"))
    return dst


@pytest.mark.skipif(not HYMENOPTERA.exists(), reason="../shared/data is absent")
def test_a_feature_run_reaches_the_cross_validated_probe_on_small_greyscale_images(with_real_weights, tmp_path):
    data = small_grey_copy(HYMENOPTERA, tmp_path / "ants28")
    config = TrainConfig(backbone="mobilenet_v2", strategy="features", image_size=112)
    result = train(DatasetSpec(str(data)), config, tmp_path / "runs")
    probe = compare(load_dataset(DatasetSpec(str(data))), ["mobilenet_v2"], config)[0]
    assert result.best_val_accuracy == pytest.approx(probe.val_accuracy, abs=0.007)  # one val image of 153
    assert result.best_val_accuracy > 0.6  # two classes: chance is 0.5
    run = load_run(result.run_dir)
    assert run.info["preprocessing"]["resize"] == run.info["preprocessing"]["crop"] == 112  # whole image, no crop
    fit = run.summary["head_fit"]
    assert fit["method"].startswith("L-BFGS") and fit["l2"] > 0 and 0 < fit["cv_accuracy"] <= 1


def val_files(run_dir) -> set[str]:
    return {p for p, _ in load_run(run_dir).split("val")}


def test_the_split_is_the_specs_never_the_training_seed(shapes_folder, tmp_path):
    """A spec with split seed 7 and a training seed of 0: the run uses split seed 7 (folders and zips)."""
    spec = DatasetSpec(str(shapes_folder), 0.3, 7)
    shown = {im.path for im in scan(spec).images if im.split == "val"}
    assert shown != {im.path for im in scan(DatasetSpec(str(shapes_folder), 0.3, 0)).images if im.split == "val"}
    result = train(spec, TrainConfig(**TINY, epochs=1, seed=0), tmp_path / "runs")
    assert val_files(result.run_dir) == shown
    info = load_run(result.run_dir).info["dataset"]
    assert info["split_seed"] == 7 and info["val_fraction"] == 0.3 and info["split_source"] == "random 30% (seed 7)"

    archive = tmp_path / "shapes.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in shapes_folder.rglob("*.png"):
            zf.write(p, str(p.relative_to(shapes_folder)))
    zspec = DatasetSpec(str(archive), 0.3, 7)
    shown_zip = {Path(im.path).name + im.path.split("/")[-2] for im in scan(zspec).images if im.split == "val"}
    zrun = train(zspec, TrainConfig(**TINY, epochs=1, seed=3), tmp_path / "runs")
    assert {Path(p).name + p.split("/")[-2] for p in val_files(zrun.run_dir)} == shown_zip


def test_counts_splits_and_skips_are_of_usable_images_with_the_scans_wording(tmp_path):
    """3 good images per class + a corrupt and a truncated JPEG: counts, splits and skips are the scan's."""
    root = tmp_path / "few"
    for cls, colour in (("red", (200, 0, 0)), ("blue", (0, 0, 200))):
        for i in range(3):
            solid(root / cls / f"{i}.png", tuple(c + i for c in colour), size=(64, 64))
    (root / "red" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = root / "blue" / "0.png"
    solid(root / "blue" / "full.jpg", (0, 0, 190), size=(64, 64), fmt="JPEG")
    (root / "blue" / "truncated.jpg").write_bytes((root / "blue" / "full.jpg").read_bytes()[:200])
    (root / "blue" / "full.jpg").unlink()
    report = scan(DatasetSpec(str(root), 0.34, 0))
    assert report.split_counts() == {"train": 4, "val": 2} and report.n_images == 6
    reasons = {Path(p.path).name: p.reason for p in report.skipped}
    assert set(reasons) == {"corrupt.jpg", "truncated.jpg"}
    assert good.exists()
    result = train(DatasetSpec(str(root), 0.34, 0), TrainConfig(**TINY, epochs=1), tmp_path / "runs")
    run = load_run(result.run_dir)
    listed = {Path(p).name for sp in ("train", "val") for p, _ in run.split(sp)}
    assert "corrupt.jpg" not in listed and "truncated.jpg" not in listed
    assert sum(len(run.split(sp)) for sp in ("train", "val")) == 6
    assert {Path(s["path"]).name: s["reason"] for s in run.summary["skipped"]} == reasons  # the scan's words
    assert result.skipped == 2


def test_feature_progress_counts_every_image_and_rates_are_named(shapes_folder, tmp_path, own_weights):
    """Progress counts cached images too; the embedding rate is never called a training rate."""
    cfg = TrainConfig(backbone="mobilenet_v3_small", weights_path=str(own_weights), strategy="features", image_size=48,
                      epochs=2, patience=0, feature_views=2)
    train(DatasetSpec(str(shapes_folder), 0.3, 1), cfg, tmp_path / "runs")
    events = []
    spec = DatasetSpec(str(shapes_folder), 0.3, 2)  # another split: some train images' augmented views are new
    train(spec, cfg, tmp_path / "runs", [events.append])
    n_train = scan(spec).split_counts()["train"]
    embedding = [e for e in events if isinstance(e, PhaseProgress) and e.phase == "embedding train images"]
    assert embedding and all(e.total == n_train for e in embedding)
    assert 0 < embedding[0].done < n_train and embedding[-1].done == n_train  # cached images counted as done
    steps = [e for e in events if isinstance(e, StepEnded)]
    rows = [e.row for e in events if isinstance(e, EpochEnded)]
    assert steps and rows and rows[-1].images_per_s is None and steps[-1].images_per_s is None  # no training rate


def _few(root: Path, classes=("red", "blue"), n: int = 4) -> Path:
    for k, cls in enumerate(classes):
        for i in range(n):
            solid(root / cls / f"{i}.png", (40 + 150 * k, 20 * i, 200 - 150 * k), size=(48, 48))
    return root


def test_a_kill_mid_write_of_the_trainer_state_still_resumes(tmp_path):
    result = train(str(_few(tmp_path / "d")), TrainConfig(**TINY, epochs=1), tmp_path / "runs")
    (Path(result.run_dir) / "trainer_state.pt").write_bytes(b"")  # what an in-place write killed midway left
    again = resume(result.run_dir, epochs=2)
    assert again.status == "finished" and again.epochs_completed == 2


def test_resuming_a_run_that_is_being_written_is_refused(tmp_path):
    result = train(str(_few(tmp_path / "d")), TrainConfig(**TINY, epochs=1), tmp_path / "runs")
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


def test_a_run_killed_before_its_first_epoch_restarts_plainly(tmp_path):
    stop = threading.Event()
    stop.set()  # stopped before anything finished, like a kill during decoding
    first = train(str(_few(tmp_path / "d")), TrainConfig(**TINY, epochs=1), tmp_path / "runs", stop=stop)
    assert first.epochs_completed == 0 and not Run(Path(first.run_dir)).has_checkpoint()
    lines = []
    again = resume(first.run_dir, [lambda e: lines.append(getattr(e, "message", ""))])
    assert again.status == "finished" and again.epochs_completed == 1
    assert any("Nothing had finished" in m and "from the beginning" in m for m in lines)


def test_classes_come_from_usable_images(tmp_path):
    root = _few(tmp_path / "d", ("red", "blue", "green"))
    for p in (root / "green").iterdir():
        p.write_bytes(b"not a picture")  # every file of one class undecodable
    (root / "empty").mkdir()
    report = scan(DatasetSpec(str(root)))
    assert report.classes == ["blue", "red"]
    assert {p.path for p in report.skipped if "empty class" in p.reason} == {"green", "empty"}
    result = train(str(root), TrainConfig(**TINY, epochs=1), tmp_path / "runs")
    assert Run(Path(result.run_dir)).classes == ["blue", "red"]  # no dead output for a class with no image


def test_refused_settings_data_or_weights_leave_no_run_folder(tmp_path):
    data = _few(tmp_path / "d")
    runs = tmp_path / "runs"
    with pytest.raises(ValueError, match="epochs"):
        train(str(data), TrainConfig(**{**TINY, "epochs": 0}), runs)
    with pytest.raises(TrainingError, match="does not exist"):
        train(str(tmp_path / "missing"), TrainConfig(**TINY, epochs=1), runs)
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(TrainingError):
        train(str(data), TrainConfig(**{**TINY, "weights_path": str(bad)}, epochs=1), runs)
    assert not runs.exists() or list(runs.iterdir()) == []


def test_a_feature_run_resumes_after_a_val_file_was_deleted(tmp_path, own_weights):
    data = _few(tmp_path / "d", n=6)
    cfg = TrainConfig(**{**TINY, "strategy": "features", "weights_path": str(own_weights)}, epochs=1)
    result = train(str(data), cfg, tmp_path / "runs")
    gone = Path(Run(Path(result.run_dir)).split("val")[0][0])
    gone.unlink()
    again = resume(result.run_dir)  # the missing file is skipped, never hashed into a failure
    assert again.status == "finished" and again.epochs_completed == 1
    assert any(s["path"] == str(gone) for s in Run(Path(result.run_dir)).summary["skipped"])


def test_no_promise_of_kept_epochs_when_there_are_none():
    from tl_core.train.trainer import explain

    _, none_kept = explain(RuntimeError("boom"), TrainConfig(), has_checkpoint=False)
    _, kept = explain(RuntimeError("boom"), TrainConfig(), has_checkpoint=True)
    assert "keeps its finished epochs" not in none_kept and "nothing was kept" in none_kept
    assert "keeps its finished epochs" in kept


def test_a_run_folder_deleted_while_training_fails_in_one_line_saying_so(tmp_path, shapes_folder):
    import shutil

    def delete_after_the_first_epoch(e) -> None:
        if isinstance(e, EpochEnded) and e.row.epoch == 1:
            shutil.rmtree(next((tmp_path / "runs").iterdir()))

    with pytest.raises(TrainingError) as caught:
        train(str(shapes_folder), TrainConfig(**TINY, epochs=2), tmp_path / "runs", [delete_after_the_first_epoch])
    assert "was deleted while the run trained" in str(caught.value) and "no epoch had finished" not in str(caught.value)


def test_a_class_only_in_val_is_refused_before_training(tmp_path):
    from helpers import solid

    for split, classes in (("train", ("red", "blue")), ("val", ("red", "blue", "green"))):
        for k, cls in enumerate(classes):
            for i in range(2):
                solid(tmp_path / "d" / split / cls / f"{i}.png", (80 * k, 20 * i, 90), size=(48, 48))
    with pytest.raises(TrainingError, match="green: validation images but no training images"):
        train(str(tmp_path / "d"), TrainConfig(**TINY, epochs=1), tmp_path / "runs")
    assert not list_runs(tmp_path / "runs")  # refused before a run folder exists
