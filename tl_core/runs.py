"""Runs on disk (`runs/<id>/`): everything needed to resume, predict or audit, written so a crash loses nothing.

Files: run.json (config, classes, preprocessing), split.json (exact images per split), metrics.jsonl
(one line per epoch, flushed), summary.json (status and best figures, replaced atomically),
best/last.safetensors (+ backbone.safetensors when only the head trains), trainer_state.pt for resume.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class RunStatus(StrEnum):
    """A run's state on disk; the job states add STARTING and STOPPING (tl_core.jobs.JobStatus)."""

    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


FINISHED, STOPPED, FAILED, RUNNING, INTERRUPTED = (RunStatus.FINISHED, RunStatus.STOPPED, RunStatus.FAILED, RunStatus.RUNNING,
                                                   RunStatus.INTERRUPTED)


def write_json(path: Path, data) -> None:
    """Atomic: a reader (the dashboard) never sees half a file, a crash never leaves one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def save_state(path: Path, state: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, tmp)
    os.replace(tmp, path)


def save_trainer_state(run_dir: Path, state: dict) -> None:
    """Optimiser and schedule for resume, written atomically: a kill mid-write never leaves a broken file."""
    tmp = run_dir / ".trainer_state.pt.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, run_dir / "trainer_state.pt")


def load_trainer_state(run_dir: Path) -> dict | None:
    """The saved trainer state, or None when it is missing or unreadable (resume then starts that run over)."""
    try:
        return torch.load(run_dir / "trainer_state.pt", weights_only=True)
    except Exception:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


@dataclass
class Run:
    dir: Path

    @property
    def id(self) -> str:
        return self.dir.name

    @property
    def info(self) -> dict:
        return json.loads((self.dir / "run.json").read_text())

    @property
    def summary(self) -> dict:
        try:
            s = json.loads((self.dir / "summary.json").read_text())
        except (OSError, json.JSONDecodeError):
            return {"status": INTERRUPTED}
        if s.get("status") == RUNNING and not _alive(s.get("pid", -1)):
            s["status"] = INTERRUPTED
        return s

    @property
    def classes(self) -> list[str]:
        return self.info["classes"]

    def metrics(self) -> list[dict]:
        path = self.dir / "metrics.jsonl"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash
                pass
        return rows

    def split(self, name: str) -> list[tuple[str, int]]:
        return [tuple(x) for x in json.loads((self.dir / "split.json").read_text()).get(name, [])]

    def model_state(self, which: str = "best") -> dict[str, torch.Tensor]:
        """Full state dict: the frozen backbone file (if any) overlaid with the checkpoint."""
        state: dict[str, torch.Tensor] = {}
        if (self.dir / "backbone.safetensors").exists():
            state.update(load_file(self.dir / "backbone.safetensors"))
        ckpt = self.dir / f"{which}.safetensors"
        if not ckpt.exists():
            raise FileNotFoundError(f"Run {self.id} has no {which} checkpoint yet (no epoch finished).")
        state.update(load_file(ckpt))
        return state

    def has_checkpoint(self) -> bool:
        return (self.dir / "best.safetensors").exists()

    # -- writing

    def append_metrics(self, row: dict) -> None:
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_summary(self, **fields) -> None:
        current = {}
        if (self.dir / "summary.json").exists():
            current = json.loads((self.dir / "summary.json").read_text())
        current.update(fields, pid=os.getpid(), updated=time.time())
        write_json(self.dir / "summary.json", current)


def new_run(runs_dir: str | Path, backbone: str) -> Run:
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{backbone}-{secrets.token_hex(2)}"
    path = runs_dir / run_id
    path.mkdir()
    return Run(path)


def list_runs(runs_dir: str | Path) -> list[Run]:
    """Newest first; folders without run.json (not ours) are ignored."""
    runs_dir = Path(runs_dir)
    if not runs_dir.exists():
        return []
    return sorted((Run(d) for d in runs_dir.iterdir() if (d / "run.json").exists()), key=lambda r: r.id, reverse=True)


def latest_finished(runs_dir: str | Path) -> Run | None:
    return next((r for r in list_runs(runs_dir) if r.has_checkpoint() and r.summary.get("status") != RUNNING), None)


def load_run(path: str | Path) -> Run:
    path = Path(path)
    if not (path / "run.json").exists():
        raise FileNotFoundError(f"{path} is not a TL Studio run (no run.json).")
    return Run(path)


def delete_run(run: Run) -> None:
    if run.summary.get("status") == RUNNING:
        raise RuntimeError(f"Run {run.id} is still training; stop it first.")
    shutil.rmtree(run.dir)


def history_rows(runs: list[Run]) -> list[dict]:
    """The run-history table (Train page, `runs`): one row a run, the same columns everywhere."""
    rows = []
    for r in runs:
        s, cfg = r.summary, r.info.get("config", {})
        rows.append({"run": r.id, "status": s.get("status"), "why": s.get("stop_reason") or s.get("error"),
                     "best val acc": s.get("best_val_accuracy"), "epochs": s.get("epochs_completed"),
                     "backbone": cfg.get("backbone"), "strategy": cfg.get("strategy"), "lr": cfg.get("lr"),
                     "batch": cfg.get("batch_size"), "dataset": r.info.get("dataset", {}).get("name"),
                     "seconds": round(s.get("seconds") or 0, 1)})
    return rows
