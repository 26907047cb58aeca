"""How long the Train page takes to render while a full fine-tune runs, against idle.

Three conditions, each timed over N reruns of the Train page (Streamlit's AppTest runs the page's script in
this process, exactly the work a refresh costs the server):
* idle: no training anywhere;
* child: a full fine-tune as a job (the dashboard's way: a child process followed through its event file);
* thread: the same fine-tune in a thread of this process (the alternative to a child process: it competes with the page for the GIL).

    python3 bench/page_load.py [--loads 15] [--image-size 96] [--json]

Prints median and 90th-percentile milliseconds per page load for each condition.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed_loads(n: int) -> list[float]:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    at.run()
    at.switch_page("app_pages/3_Train.py").run()  # first render: fills the caches (scan, backbone table)
    assert not at.exception, at.exception
    times = []
    for _ in range(n):
        t = time.perf_counter()
        at.run()
        times.append((time.perf_counter() - t) * 1000)
    return times


def summary(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=10)
    return {"loads": len(times), "median_ms": round(statistics.median(times), 1), "p90_ms": round(q[-1], 1)}


def wait_for_training(is_training, timeout: float = 300) -> None:
    """Measure only while images are being trained on, not while the child imports torch."""
    deadline = time.time() + timeout
    while not is_training() and time.time() < deadline:
        time.sleep(0.2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loads", type=int, default=15)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="tl_page_load_"))
    os.environ.update(TL_STUDIO_HOME=str(home), TL_STUDIO_RUNS=str(home / "runs"))

    from app_pages.ui.shared import job_manager
    from tl_core.config import TrainConfig
    from tl_core.train.trainer import Trainer

    config = TrainConfig(backbone="mobilenet_v3_small", pretrained=False, strategy="full", epochs=500,
                         image_size=args.image_size, patience=0)
    results = {"idle": summary(timed_loads(args.loads))}

    jobs = job_manager()
    job = jobs.start("demo", config)
    wait_for_training(lambda: job.snapshot().in_training_phase)
    results["child"] = summary(timed_loads(args.loads))
    jobs.stop(job)
    jobs.wait(job, 120)

    stop, phase = threading.Event(), []
    trainer = Trainer(config, [lambda e: phase.append(getattr(e, "phase", None))], stop)
    thread = threading.Thread(target=trainer.fit, args=("demo", home / "runs"), daemon=True)
    thread.start()
    wait_for_training(lambda: "training" in phase)
    results["thread"] = summary(timed_loads(args.loads))
    stop.set()
    thread.join(120)

    print(json.dumps(results) if args.json else "\n".join(
        f"{k:<7} median {v['median_ms']:>7.1f} ms, p90 {v['p90_ms']:>7.1f} ms over {v['loads']} loads" for k, v in results.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
