"""The Train page through AppTest: settings from the one declaration, jobs started, refused, stopped and
resumed, the run history, and the demo flow on to Predict."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import ROOT, open_page

from tl_core.config import EPOCHS_BY_STRATEGY, TrainConfig, options


def test_strategy_defaults_follow_the_strategy_and_every_option_has_a_widget_and_a_flag(tmp_path, monkeypatch):
    """Epochs follow the strategy, and the page and the CLI both derive every option from TrainConfig's one declaration."""
    monkeypatch.setenv("TL_STUDIO_RUNS", str(tmp_path / "runs"))
    at = open_page("pages/3_Train.py")
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
