"""Compact summary of bench/gpu_check.sh's results folder, next to the targets and published figures.

    python3 bench/gpu_summary.py OUT_DIR
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

# Published figures (sources in BENCHMARKS.md, the H200 sections).
NVIDIA_RN50_A100_AMP_TRAIN = 2470  # img/s, 1x A100 80GB, DeepLearningExamples resnet50v1.5
TIMM_4090_AMP_NHWC_INFER = {"resnet18": 18247.4, "resnet50": 5088.4, "mobilenet_v2": 11768.0}  # batch 512, 224 px
TARGET_RN50_TRAIN = 3000
TARGET_SPEEDUP = 10


def load(out: Path, name: str):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None


def met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def bench_lines(b: dict) -> list[str]:
    lines = [f"bench: {b['backbone']}, {b['epochs']} epochs, {b['device']}, pretrained={b['pretrained']}"]
    for mode, sides in b["modes"].items():
        ref, ours = sides["reference"], sides["tl_studio"]
        ok = ours["speedup"] >= TARGET_SPEEDUP and ours["best_val_accuracy"] >= ref["best_val_accuracy"]
        lines.append(f"  {mode:<8} reference {ref['seconds']:>7.2f}s acc {ref['best_val_accuracy']:.3f} | TL Studio "
                     f"{ours['seconds']:>6.2f}s acc {ours['best_val_accuracy']:.3f} | {ours['speedup']:>5.1f}x "
                     f"(target {TARGET_SPEEDUP}x, acc no lower: {met(ok)})")
    return lines


def throughput_lines(title: str, t: dict) -> list[str]:
    lines = [f"{title}:" + ("" if t["results"] else " no results (see the steps' errors above)")]
    for r in t["results"]:
        lines.append(
            f"  {r['model']:<13} batch {r['batch']:>3} {r['dtype']}: train {r['train_images_per_s']:>8.1f} img/s "
            f"(step {r['compute_ms']:.1f} ms, fwd+bwd {r['fwd_bwd_ms']:.1f} ms), input pipeline x{r['pipeline_ratio']:.2f} "
            f"({r['pipeline_images_per_s']:.0f} img/s) | inference {r['infer_images_per_s']:>8.1f} img/s "
            f"(timm 4090: {TIMM_4090_AMP_NHWC_INFER.get(r['model'], '-')}) | warm-up {r['warmup_s']} s"
            + (f", peak {r['peak_memory_mb']:.0f} MB" if r.get("peak_memory_mb") else ""))
        if r["model"] == "resnet50" and r["size"] == 224:
            lines.append(f"    resnet50 training: {r['train_images_per_s']:.0f} img/s vs target {TARGET_RN50_TRAIN} "
                         f"(NVIDIA A100 AMP: {NVIDIA_RN50_A100_AMP_TRAIN}): {met(r['train_images_per_s'] >= TARGET_RN50_TRAIN)}")
    return lines


def oom_lines(o: dict) -> list[str]:
    capped, restart = o["capped"], o["restart"]
    lines = ["oom check: " + ("PASSED" if o["passed"] else "FAILED")]
    if "skipped" in capped:
        lines.append(f"  capped run: skipped ({capped['skipped']})")
    else:
        lines.append(f"  capped to {o['cap']['mb']} MB: {capped['status']}: {capped.get('message', '')!r} "
                     f"(clear message: {capped['clear_message']}; run marked {capped.get('run_status')})")
    if o["allocated_mb_after_cleanup"] is not None:
        lines.append(f"  GPU memory still allocated after the failure and cleanup: {o['allocated_mb_after_cleanup']} MB")
    lines.append(f"  restart, same settings: {restart['status']} in {restart['seconds']}s"
                 + (f": {restart.get('message')}" if not restart["ok"] else ""))
    if "resume_failed_run" in o:
        r = o["resume_failed_run"]
        lines.append(f"  resume of the failed run: {r['status']}" + (f": {r.get('message')}" if not r["ok"] else ""))
    return lines


def util_line(path: Path) -> str | None:
    try:
        rows = list(csv.reader(path.open()))[1:]
        util = [float(r[1].strip().split()[0]) for r in rows if len(r) > 2 and r[1].strip()[:1].isdigit()]
    except (OSError, ValueError, IndexError):
        return None
    busy = [u for u in util if u > 0]
    if not util:
        return None
    return (f"GPU utilisation (nvidia-smi every 0.5 s, {len(util)} samples): max {max(util):.0f}%, "
            f"mean while busy {sum(busy) / max(len(busy), 1):.0f}%")


def main(out: Path) -> None:
    lines = ["", "=" * 30 + " SUMMARY " + "=" * 30]
    sections = [("bench.json", bench_lines), ("throughput.json", lambda t: throughput_lines("throughput (eager)", t)),
                ("throughput_compile.json", lambda t: throughput_lines("throughput (torch.compile)", t)),
                ("oom.json", oom_lines)]
    for name, render in sections:
        data = load(out, name)
        try:
            lines += render(data) if data else [f"{name}: missing (see the step's error above)"]
        except (KeyError, TypeError) as e:
            lines.append(f"{name}: unexpected content ({type(e).__name__}: {e})")
    speed = load(out, "speed.json")
    if speed:
        lines.append("Backbones page (tl_core.measure.speed): " + ", ".join(
            f"{r['name']} {r['images_per_s']} img/s ({r['ms_per_image']} ms at batch 1)" for r in speed))
    util = util_line(out / "gpu_util.csv")
    if util:
        lines.append(util)
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
