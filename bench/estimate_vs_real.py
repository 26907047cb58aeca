"""The time estimate against the real wait: `python -m tl_core estimate` beside `python -m tl_core train`, both as
the user runs them (separate processes), the train timed from launch to exit, as a job is from click to finish.

Each case starts from an empty TL Studio home (cold embedding cache, speeds and start-up measured by the estimate
itself, never inside the timed run) and the shared MobileNetV2 ImageNet weights where ../shared/data has them.

    python3 bench/estimate_vs_real.py [--data demo ../shared/data/datasets/hymenoptera_data] [--strategies features full]
                                      [--epochs 5] [--backbone mobilenet_v2] [--json]

Prints one row per (dataset, strategy) as each finishes (with --json, one JSON line each): estimated seconds,
real seconds, real / estimated and whether that is within the target 0.5-2x, with how busy the machine was before
the case (share of CPU time in use, `tl_core.measure.speed.machine_busy`, and the one-minute load average): a
figure taken on a busy machine says so. Exits 1 when a case is outside 0.5-2x. The unit tests check the estimate's
shape only (tests/test_estimate.py); this is the timed comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Case:
    data: str
    strategy: str
    estimated: float
    real: float
    phases: dict[str, float]
    busy: float | None  # share of the machine's CPU time in use before the case
    load: float  # one-minute load average before the case

    @property
    def ratio(self) -> float:
        return self.real / self.estimated

    @property
    def within(self) -> bool:
        return LOW <= self.ratio <= HIGH


LOW, HIGH = 0.5, 2.0  # the estimate's target: the real run takes between half and twice what it says


def _cli(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """(seconds from launch to exit, stdout's last line) of `python -m tl_core ...`."""
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "tl_core", *args], env=env, capture_output=True, text=True, cwd=ROOT)
    took = time.perf_counter() - t
    if out.returncode:
        raise RuntimeError(f"{' '.join(args)} failed: {out.stderr[-2000:]}")
    return took, out.stdout.strip().splitlines()[-1]


def run_case(data: str, strategy: str, epochs: int, backbone: str, torch_home: str) -> Case:
    from tl_core.measure.speed import machine_busy

    busy, load = machine_busy(1.0), os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "TL_STUDIO_HOME": home, "TORCH_HOME": torch_home,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        flags = [data, f"--strategy={strategy}", f"--epochs={epochs}", f"--backbone={backbone}", "--patience=0", "--json"]
        est = json.loads(_cli(["estimate", *flags], env)[1])
        real, _ = _cli(["train", *flags, f"--runs-dir={Path(home) / 'runs'}"], env)
        return Case(data, strategy, est["seconds"], round(real, 1), est["phases"], busy, round(load, 2))


def main() -> None:
    from tl_core.measure.bench import HYMENOPTERA, link_shared_weights

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=["demo", *([str(HYMENOPTERA)] if HYMENOPTERA.exists() else [])])
    p.add_argument("--strategies", nargs="+", default=["features", "full"])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    torch_home = os.environ.get("TORCH_HOME") or str(Path(tempfile.gettempdir()) / "tl_studio_torch_home")
    link_shared_weights(Path(torch_home))
    if not a.json:
        print(f"| data | strategy | estimated (s) | real, launch to exit (s) | real / estimated | within {LOW}-{HIGH}x "
              "| CPU in use before | load (1 min) before |")
        print("|---|---|---:|---:|---:|---|---:|---:|")
    cases = []
    for d in a.data:
        for s in a.strategies:  # each case as soon as it is done: a long run's earlier figures are never lost
            c = run_case(d, s, a.epochs, a.backbone, torch_home)
            cases.append(c)
            if a.json:
                print(json.dumps({**asdict(c), "ratio": round(c.ratio, 2), "within": c.within}), flush=True)
            else:
                busy = "unknown" if c.busy is None else f"{c.busy:.0%}"
                print(f"| {Path(c.data).name} | {c.strategy} | {c.estimated:.1f} | {c.real:.1f} | {c.ratio:.2f} | "
                      f"{'yes' if c.within else 'NO'} | {busy} | {c.load:.2f} |", flush=True)
    sys.exit(0 if all(c.within for c in cases) else 1)


if __name__ == "__main__":
    main()
