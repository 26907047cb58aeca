"""Training events: every type survives JSON exactly, and the event file is read only up to whole lines."""

from __future__ import annotations

import pytest

from tl_core.data.sources import Problem
from tl_core.train import events as ev


def test_every_event_round_trips_exactly(tmp_path):
    row = ev.EpochRow(3, 0.1 + 0.2, 1 / 3, 2.5e-9, 0.875, 1e-3, 123.456, 7.0, 8.25, 0.9, 2)
    result = ev.RunResult("/runs/x", "stopped", 0.9, 2, 3, 12.5, 40.0, 1, "stopped by request after epoch 3")
    events = [ev.RunStarted("/runs/x", ["ants", "bees"], "cpu", "torch.bfloat16", 5, False, 1),
              ev.PhaseStarted("decoding", "Decoding images once"), ev.PhaseProgress("embedding", 3, 10, None, 12.0),
              ev.PhaseProgress("embedding", 4, 10, 2.5), ev.StepEnded(1, 2, 3, float("inf"), 1e-4, 10.0, None),
              ev.EpochEnded(row, 5, True), ev.Logged("ünïcode \"quoted\"\nnew line"),
              ev.RunEnded(result, (Problem("a/b.jpg", "not an image"),)), ev.RunEnded(result),
              ev.RunFailed("Out of memory.", "Lower it.", None)]
    assert {type(e) for e in events} == set(ev.EVENT_TYPES.values())  # every class is covered
    for e in events:
        assert ev.from_json(ev.to_json(e)) == e and "\n" not in ev.to_json(e)
    file = ev.EventLog(tmp_path / "events.jsonl")
    for e in events:
        file(e)
    with open(file.path, "a") as f:
        f.write(ev.to_json(events[0])[:20])  # a line still being written is not read yet
    got, offset = file.read()
    assert got == events
    more, same = file.read(offset)
    assert more == [] and same == offset
    with pytest.raises(ValueError):
        ev.from_json('{"type": "os.system"}')
