"""Run folders: listed, locked to one writer, deleted only when not training; broken files read as broken,
with one line naming the file."""

from __future__ import annotations

import pytest
from helpers import TINY

from tl_core.config import TrainConfig
from tl_core.train.runs import list_runs, load_run
from tl_core.train.trainer import train


def test_runs_are_listed_and_deleted_but_not_while_training(tmp_path):
    from tl_core.train.runs import RUNNING, delete_run

    result = train("demo", TrainConfig(**TINY, epochs=1), tmp_path)
    run = load_run(result.run_dir)
    assert [r.id for r in list_runs(tmp_path)] == [run.id]
    run.write_summary(status=RUNNING)  # this process is alive: the run counts as training
    with pytest.raises(RuntimeError, match="still training"):
        delete_run(run)
    run.write_summary(status="finished")
    delete_run(run)
    assert list_runs(tmp_path) == []
