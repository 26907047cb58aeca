"""The learning-rate finder: a short run of the one training loop on the user's config and split, a rate that trains."""

from __future__ import annotations

import json
import math

import pytest
from helpers import HYMENOPTERA

from tl_core.cli.main import main
from tl_core.config import TrainConfig
from tl_core.data.scan import scan
from tl_core.data.sources import DatasetSpec
from tl_core.train.events import PhaseStarted, StepEnded
from tl_core.train.lr_find import SANE, lr_find, suggest
from tl_core.train.trainer import train

LRS = [10 ** (-6 + i * 0.1) for i in range(61)]  # 1e-6 .. 1


def curve(fall_at: int, bottom_at: int) -> list[float]:
    """Flat at 0.7, falling from `fall_at` to `bottom_at`, then climbing: the shape of a real sweep."""
    return [0.7 if i < fall_at else 0.7 - 0.6 * min(i - fall_at, bottom_at - fall_at) / (bottom_at - fall_at)
            + (0.05 * (i - bottom_at) if i > bottom_at else 0.0) for i in range(len(LRS))]


def test_the_suggestion_is_the_steepest_fall_below_the_minimum():
    lr, why = suggest(LRS, curve(25, 45), TrainConfig())  # falls over 1e-3.5 .. 1e-1.5
    assert 10**-3.5 <= lr <= 10**-1.5 / 3 and "steepest" in why


def test_the_suggestion_stays_a_third_below_the_lowest_loss_and_in_the_sane_range():
    lr, why = suggest(LRS, curve(43, 45), TrainConfig())  # a cliff just before the minimum at 10^-1.5
    assert lr <= 10**-1.5 / 3 + 1e-12 and SANE["adamw"][0] <= lr <= SANE["adamw"][1]
    early, why_early = suggest(LRS, curve(2, 12), TrainConfig())  # a fall at 1e-6: far too low to train
    assert early == SANE["adamw"][0] and "within" in why_early


def test_a_flat_curve_keeps_the_configured_rate():
    assert suggest(LRS, [0.7] * len(LRS), TrainConfig(lr=3e-4)) == (3e-4, pytest.approx(
        "the loss hardly fell during the sweep, so the configured rate is kept"))
    with pytest.raises(ValueError, match="too short"):
        suggest(LRS[:3], [0.7, 0.6, 0.5], TrainConfig())


def test_the_sweep_is_the_training_loop_on_the_users_split_and_batch(shapes_folder, own_weights):
    """Steps of the configured batch size on the training split the spec makes (its validation fraction)."""
    spec = DatasetSpec(str(shapes_folder), val_fraction=0.5, split_seed=3)
    config = TrainConfig(backbone="mobilenet_v3_small", weights_path=str(own_weights), strategy="finetune", batch_size=5,
                         image_size=48)
    events = []
    result = lr_find(spec, config, steps=12, listeners=[events.append])
    n_train = scan(spec).split_counts()["train"]
    assert any(isinstance(e, PhaseStarted) and e.message.endswith(f"on {n_train} images") for e in events)
    assert len([e for e in events if isinstance(e, StepEnded)]) == len(result.lrs) + (len(result.lrs) < 12)
    assert result.lrs == sorted(result.lrs) and all(math.isfinite(v) for v in result.losses)
    assert result.strategy == "finetune" and math.isfinite(result.suggestion)


def test_a_fitted_head_and_a_cannot_learn_config_are_refused(capsys):
    assert main(["lr-find", "demo", "--json"]) == 1  # features: the head is fitted outright
    assert "no learning rate to find" in capsys.readouterr().err
    assert main(["lr-find", "demo", "--no-pretrained", "--json"]) == 1
    assert "cannot learn" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["lr-find", "demo", "--strategy", "full", "--steps", "-3"])
    assert "must be 1 or more (got -3)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["lr-find", "demo", "--strategy", "full", "--batch-size", "0"])
    assert "--batch-size: must be between 1 and 1024 (got 0)" in capsys.readouterr().err


def lr_finder_app():
    import streamlit as st

    from app_pages.ui.lr_find import render_lr_finder
    from tl_core.config import TrainConfig
    from tl_core.data.sources import DatasetSpec

    st.number_input("Learning rate (head)", 1e-7, 10.0, 1e-3, format="%.5f", key="cfg_lr")  # as on the Train page
    render_lr_finder(DatasetSpec("demo"), TrainConfig(strategy="finetune", image_size=64, batch_size=16), "cfg_lr", steps=20)


def test_the_train_pages_finder_plots_the_point_and_one_click_sets_the_rate(with_real_weights):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(lr_finder_app, default_timeout=300)
    at.run()
    at.button(key="lr_find_run").click().run()
    assert not at.exception, at.exception
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert chart["layout"]["shapes"] and chart["layout"]["shapes"][0]["type"] == "line"  # the suggested rate, marked
    at.button(key="lr_find_use").click().run()
    suggested = float(at.button(key="lr_find_use").label.split()[-1])
    assert at.number_input(key="cfg_lr").value == pytest.approx(suggested, rel=0.06)


@pytest.mark.slow
def test_the_suggested_rate_trains_as_well_as_the_default(with_real_weights, tmp_path, capsys):
    """On ants vs bees: `lr-find --strategy finetune` then three epochs at its rate reach at least the default
    rate's accuracy minus 0.03."""
    if not HYMENOPTERA.exists():
        pytest.skip("../shared/data is absent")
    data = str(HYMENOPTERA)
    assert main(["lr-find", data, "--strategy", "finetune", "--json"]) == 0
    rate = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["suggestion"]
    base = TrainConfig(strategy="finetune", epochs=3)
    default = train(data, base, tmp_path / "runs").best_val_accuracy
    found = train(data, TrainConfig(strategy="finetune", epochs=3, lr=rate), tmp_path / "runs").best_val_accuracy
    assert found >= default - 0.03, (rate, found, default)
