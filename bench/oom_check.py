"""On CUDA: a batch that cannot fit gives the clear "Out of memory" message, and the job can be restarted.

No giant batch is needed: on CUDA the process is capped to a small share of the GPU's memory
(`torch.cuda.set_per_process_memory_fraction`), a real full fine-tune with one batch of the whole training
split must then fail with `TrainingError("Out of memory ...")`; with the cap lifted and the cache emptied,
the same settings must train (a fresh run) and the failed run is resumed. On CPU (the dry run) there is no
per-process cap, so only the restart part runs.

    PYTHONPATH=. python3 bench/oom_check.py DATA [--device cuda] [--cap-mb 1024] [--batch 256] > oom.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time

import torch

from tl_core.config import TrainConfig
from tl_core.models import backbones
from tl_core.train.runs import load_run
from tl_core.train.trainer import TrainingError, resume, train


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def attempt(run) -> dict:
    """Run `run()` and describe the outcome as data: status, message, seconds."""
    t = time.perf_counter()
    try:
        r = run()
        out = {"ok": r.status == "finished", "status": r.status, "epochs": r.epochs_completed,
               "best_val_accuracy": round(r.best_val_accuracy, 4)}
    except TrainingError as e:
        summary = load_run(e.run_dir).summary if e.run_dir else {}
        out = {"ok": False, "status": "TrainingError", "message": str(e), "suggestion": e.suggestion,
               "run_dir": e.run_dir, "run_status": summary.get("status"), "run_error": summary.get("error")}
    except Exception as e:  # anything else is a finding too: report it, don't crash the check
        out = {"ok": False, "status": type(e).__name__, "message": str(e)[:500]}
    out["seconds"] = round(time.perf_counter() - t, 2)
    return out


def free_device_memory(device: torch.device) -> float | None:
    """Drop what Python still references, return cached blocks to the driver; MB still allocated (CUDA)."""
    gc.collect()
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    return round(torch.cuda.memory_allocated(device) / 2**20, 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--device", default="cuda")
    p.add_argument("--cap-mb", type=int, default=1024, help="memory cap for the run that must fail (CUDA)")
    p.add_argument("--batch", type=int, default=256, help="larger than the training split: one batch of all of it")
    p.add_argument("--backbone", default="mobilenet_v2")
    args = p.parse_args()
    device = torch.device(args.device)
    pretrained = backbones.is_cached(backbones.pick_weights(args.backbone))
    config = TrainConfig(backbone=args.backbone, strategy="full", epochs=1, batch_size=args.batch, device=args.device,
                         pretrained=pretrained, patience=0)
    out: dict = {"device": str(device), "torch": torch.__version__, "backbone": args.backbone, "batch": args.batch,
                 "pretrained": pretrained}
    runs = tempfile.mkdtemp(prefix="oom_runs_")
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        fraction = args.cap_mb * 2**20 / total
        out["cap"] = {"mb": args.cap_mb, "fraction": round(fraction, 5), "total_mb": round(total / 2**20)}
        log(f"capped run: {args.cap_mb} MB of {total / 2**20:.0f} MB, batch {args.batch} ...")
        torch.cuda.set_per_process_memory_fraction(fraction, torch.cuda.current_device())
        try:
            capped = attempt(lambda: train(args.data, config, runs))
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, torch.cuda.current_device())
        capped["clear_message"] = capped.get("message", "").startswith("Out of memory")
        out["capped"] = capped
        log(f"  {capped}")
    else:
        out["capped"] = {"skipped": "no per-process memory cap on this device; only the restart is checked"}
    out["allocated_mb_after_cleanup"] = free_device_memory(device)
    log("restart with the same settings, cap lifted ...")
    out["restart"] = attempt(lambda: train(args.data, config, runs))
    log(f"  {out['restart']}")
    failed_dir = out["capped"].get("run_dir")
    if failed_dir:
        free_device_memory(device)
        log(f"resume the failed run {failed_dir} ...")
        out["resume_failed_run"] = attempt(lambda: resume(failed_dir))
        log(f"  {out['resume_failed_run']}")
    checks = [out["restart"]["ok"]]
    if device.type == "cuda":
        checks.append(out["capped"]["clear_message"])
    out["passed"] = all(checks)
    print(json.dumps(out))
    return 0 if out["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
