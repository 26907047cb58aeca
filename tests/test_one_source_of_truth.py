"""Issue 7: one dataset spec, one scan, one config declaration, one loop, typed events, honest numbers."""

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import HYMENOPTERA, ROOT, solid
from streamlit.testing.v1 import AppTest

from tl_core.config import EPOCHS_BY_STRATEGY, TrainConfig, options
from tl_core.data.scan import scan
from tl_core.data.sources import DatasetSpec, load_dataset
from tl_core.jobs.manager import JobManager
from tl_core.train.events import EpochEnded, PhaseProgress, StepEnded
from tl_core.train.runs import load_run
from tl_core.train.trainer import train

TINY = dict(backbone="mobilenet_v3_small", pretrained=False, strategy="full", image_size=48, batch_size=16, patience=0)


def val_files(run_dir) -> set[str]:
    return {p for p, _ in load_run(run_dir).split("val")}


def test_the_split_is_the_specs_never_the_training_seed(shapes_folder, tmp_path):
    """Defect 1: Dataset page split seed 7, training seed 0: the run must use split seed 7 (folders and zips)."""
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
    """Defect 2: 3 good images per class + a corrupt and a truncated JPEG."""
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


def test_measurements_warm_up_and_take_the_median():
    """Defect 3: the first calls of a model are slow; one timing of them is not its speed."""
    import torch

    from tl_core.measure.speed import measure, median_seconds

    calls = []

    def slow_start():
        calls.append(1)
        time.sleep(0.3 if len(calls) <= 2 else 0.002)

    assert median_seconds(slow_start, torch.device("cpu"), warmup=3, reps=5) < 0.05
    s = measure("mobilenet_v3_small", torch.device("cpu"), batch=8, size=64, train_batch=8)
    per_image_batched_ms = 1000 / s.images_per_s
    assert 0 < s.ms_per_image < 20 * per_image_batched_ms  # batch 1 costs more per image, never 300x more
    assert s.train_images_per_s and s.train_images_per_s > 0
    assert "CPU" in s.device


@pytest.mark.skipif(not HYMENOPTERA.exists(), reason="../shared/data is absent")
@pytest.mark.parametrize("strategy,epochs", [("features", 5), ("full", 2)])
def test_the_estimate_is_within_2x_of_the_real_run(with_real_weights, tmp_path, monkeypatch, strategy, epochs):
    """Defect 4: the estimate comes from measured rates of the phases the run really has (cold caches)."""
    from tl_core.measure.estimate import estimate

    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "cold"))
    spec = DatasetSpec(str(HYMENOPTERA))
    config = TrainConfig(backbone="mobilenet_v2", strategy=strategy, epochs=epochs, patience=0)
    est = estimate(scan(spec), config)
    predicted = est.seconds - est.phases["starting"]  # trained in this process: no new interpreter to start
    t = time.perf_counter()
    train(spec, config, tmp_path / "runs")
    real = time.perf_counter() - t
    assert 0.5 * predicted <= real <= 2 * predicted, (real, predicted)


def test_clocks_stop_and_an_early_stop_says_why(tmp_path):
    """Defect 5: elapsed and ETA freeze when a job ends; early stopping is named with its epoch and patience."""
    jobs = JobManager(tmp_path)
    config = TrainConfig(**{**TINY, "patience": 1, "strategy": "features"}, embedding_cache=False, epochs=6, lr=1e-7,
                         augment="none")  # a frozen backbone whose head barely moves: no gain after epoch 1
    job = jobs.start("demo", config)
    assert jobs.wait(job, 300) == "finished"
    first = job.snapshot()
    time.sleep(1.2)
    later = job.snapshot()
    assert later.elapsed == first.elapsed and later.eta is None
    assert first.result.stop_reason == "early-stopped at epoch 2 (patience 1)"
    assert "early-stopped at epoch 2 (patience 1)" in first.status_text and first.fraction_done == 1.0
    assert "2 of 6 epochs" in first.progress_text and "ETA" not in first.progress_text
    assert load_run(first.run_dir).summary["stop_reason"] == "early-stopped at epoch 2 (patience 1)"


def test_feature_progress_counts_every_image_and_rates_are_named(shapes_folder, tmp_path):
    """Defect 5: progress counts cached images too; the embedding rate is never called a training rate."""
    cfg = TrainConfig(backbone="mobilenet_v3_small", pretrained=False, strategy="features", image_size=48, epochs=2, patience=0,
                      feature_views=2)
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
    assert steps and rows and rows[-1].images_per_s == pytest.approx(steps[-1].images_per_s)


def _train_page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/3_Train.py").run()
    assert not at.exception, at.exception
    return at


def test_strategy_defaults_follow_the_strategy_and_every_option_has_a_widget_and_a_flag(tmp_path, monkeypatch):
    """Defect 6 and the CLI/page parity: both are derived from TrainConfig's one declaration."""
    monkeypatch.setenv("TL_STUDIO_RUNS", str(tmp_path / "runs"))
    at = _train_page()
    assert at.number_input(key="cfg_epochs").value == EPOCHS_BY_STRATEGY["features"]
    at.radio(key="cfg_strategy").set_value("full").run()
    assert at.number_input(key="cfg_epochs").value == EPOCHS_BY_STRATEGY["full"] == 5
    at.radio(key="cfg_strategy").set_value("features").run()
    assert at.number_input(key="cfg_epochs").value == 10
    assert at.number_input(key="cfg_lr").value is None  # the optimiser's own default unless the user sets one
    widget_keys = {w.key for w in at.main if getattr(w, "key", None)} | {
        w.key for e in at.expander for w in e if getattr(w, "key", None)}
    page_options = {name for name, _, opt, _ in options() if opt.page}
    assert {f"cfg_{n}" for n in page_options} <= widget_keys
    helptext = subprocess.run([sys.executable, "-m", "tl_core", "train", "--help"], capture_output=True, text=True,
                              cwd=ROOT, env=os.environ.copy()).stdout
    for name, *_ in options():
        assert "--" + name.replace("_", "-") in helptext, name
    assert TrainConfig(strategy="full").epochs == 5 and TrainConfig(strategy="full", epochs=7).epochs == 7


def test_cli_scan_lists_each_usable_files_split_and_train_uses_exactly_it(shapes_folder, tmp_path):
    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "tl_core", *args], capture_output=True, text=True, cwd=ROOT,
                             env=os.environ.copy(), timeout=300)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    report = cli("scan", str(shapes_folder), "--val-fraction", "0.3", "--split-seed", "5", "--json")
    assert report["n_images"] == 30 and all(f["split"] in ("train", "val") for f in report["files"])
    result = cli("train", str(shapes_folder), "--val-fraction", "0.3", "--split-seed", "5", "--backbone", "mobilenet_v3_small",
                 "--no-pretrained", "--strategy", "full", "--image-size", "48", "--epochs", "1", "--seed", "9",
                 "--runs-dir", str(tmp_path), "--json")
    split = json.loads((Path(result["run_dir"]) / "split.json").read_text())
    assert {sp: sorted(p for p, _ in items) for sp, items in split.items()} == {
        sp: sorted(f["path"] for f in report["files"] if f["split"] == sp) for sp in ("train", "val")}
    est = cli("estimate", str(shapes_folder), "--backbone", "mobilenet_v3_small", "--strategy", "full", "--epochs", "1", "--json")
    assert est["seconds"] > 0 and "training" in est["phases"]
    assert load_dataset(DatasetSpec(str(shapes_folder), 0.3, 5)).counts() == report["counts"]
