"""Imbalanced classes end to end: ants vs bees with the bees cut to a tenth in train (val untouched), trained as
a fitted head with and without class weights (real MobileNetV2 weights), then scored on the held-out val split;
the figures in `evaluate --json`, the run's summary and the pages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import HYMENOPTERA, cli_out, open_page, torch_home

from tl_core.config import TrainConfig
from tl_core.train.runs import load_run
from tl_core.train.trainer import train
from tl_core.use.predict import evaluate


@pytest.fixture(scope="module")
def lopsided_bees(tmp_path_factory) -> Path:
    """124 ants and 13 bees to train on (every tenth bee), the 153 validation photos as they are."""
    if not HYMENOPTERA.exists():
        pytest.skip("../shared/data is absent: no ants vs bees photos here")
    root = tmp_path_factory.mktemp("lopsided") / "ants_and_few_bees"
    for split in ("train", "val"):
        for folder in sorted((HYMENOPTERA / split).iterdir()):
            files = sorted(folder.iterdir())
            (root / split / folder.name).mkdir(parents=True)
            for f in files[::10] if (split, folder.name) == ("train", "bees") else files:
                shutil.copyfile(f, root / split / folder.name / f.name)
    return root


@pytest.fixture(scope="module")
def weighed_runs(lopsided_bees, real_weights, tmp_path_factory) -> dict[str, Path]:
    """The same fitted-head run with balance none and auto (the default: weights at this 9.5x imbalance)."""
    runs = tmp_path_factory.mktemp("runs")
    with torch_home(real_weights):
        return {balance: Path(train(str(lopsided_bees), TrainConfig(strategy="features", balance=balance), runs).run_dir)
                for balance in ("none", "auto")}


def test_class_weights_raise_balanced_accuracy_on_held_out_images(weighed_runs):
    plain, weighted = (evaluate(weighed_runs[b]) for b in ("none", "auto"))
    recall = {name: {c["class"]: c["recall"] for c in ev.per_class} for name, ev in (("plain", plain), ("weighted", weighted))}
    assert weighted.balanced_accuracy > plain.balanced_accuracy + 0.01  # measured: 88.0% -> 90.9%
    assert recall["weighted"]["bees"] > recall["plain"]["bees"]  # the small class is recognised more often
    assert weighted.balanced_accuracy > 0.8  # and far above chance (50%)
    summary = load_run(weighed_runs["auto"]).summary
    assert summary["class_weights"]["bees"] > 5 * summary["class_weights"]["ants"]
    assert "class_weights" not in load_run(weighed_runs["none"]).summary
    assert 0.5 < summary["best_val_balanced_accuracy"] <= 1 and set(summary["best_val_recall"]) == {"ants", "bees"}
    assert (run := load_run(weighed_runs["auto"])).metrics()[0]["val_recall"] == list(summary["best_val_recall"].values())
    assert run.summary["head_fit"]["cv_accuracy"] > 0.5


def test_evaluate_json_reports_balanced_accuracy_and_per_class_recall(weighed_runs, capsys):
    report = json.loads(cli_out(capsys, "evaluate", str(weighed_runs["auto"]), "--json").strip().splitlines()[-1])
    recalls = {c["class"]: c["recall"] for c in report["per_class"]}
    assert set(recalls) == {"ants", "bees"}
    assert report["balanced_accuracy"] == pytest.approx(sum(recalls.values()) / 2, abs=1e-4)
    text = cli_out(capsys, "evaluate", str(weighed_runs["auto"]))
    assert "balanced accuracy: " in text and "mean of the per-class recall" in text


def test_pages_show_the_imbalance_and_balanced_accuracy(ui, weighed_runs, lopsided_bees, monkeypatch):
    monkeypatch.setenv("TL_STUDIO_RUNS", str(weighed_runs["auto"].parent))
    monkeypatch.setenv("TL_STUDIO_DATA_ROOT", str(lopsided_bees.parent))
    at = open_page("app_pages/1_Dataset.py")
    at.radio(key="dataset_kind").set_value("Folder or CSV on the server").run()
    at.selectbox(key="server_folder").set_value(lopsided_bees.name).run()
    at.button(key="use_folder").click().run()
    problems = next(df.value for df in at.dataframe if "reason" in df.value.columns)
    assert problems.reason.str.startswith("imbalanced classes: ants has 124 training images, bees 13 (9.5x)").any()

    at = open_page("app_pages/3_Train.py")
    history = next(df.value for df in at.dataframe if "run" in df.value.columns)
    assert "balanced acc" in history.columns and history["balanced acc"].notna().all()

    at = open_page("app_pages/4_Predict.py")
    at.selectbox(key="predict_run").set_value(weighed_runs["auto"].name).run()
    at.button(key="eval_btn").click().run()
    assert not at.exception, at.exception
    ev = evaluate(weighed_runs["auto"])
    balanced = next(m for m in at.metric if m.label == "Balanced accuracy")
    assert balanced.value == f"{ev.balanced_accuracy:.1%}" and balanced.proto.delta.startswith("lowest recall: ")
