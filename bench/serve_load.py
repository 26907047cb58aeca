"""Load test of the prediction API: `python -m tl_core serve RUN` in a subprocess on a free loopback port, and
C concurrent clients posting one validation picture each per request until R requests are answered.

    python3 bench/serve_load.py RUN_DIR [--clients 8] [--requests 400] [--json]

Prints requests per second, p50 and p95 latency (ms) and how many requests each forward pass answered on average.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/health", timeout=2).ok:
                return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise RuntimeError("the server did not come up")


def pictures(run_dir: Path, n: int = 32) -> list[tuple[str, bytes]]:
    from tl_core.train.runs import load_run

    run = load_run(run_dir)
    items = run.split("val") or run.split("train")
    return [(Path(p).name, Path(p).read_bytes()) for p, _ in items[:n]]


def load(url: str, files: list[tuple[str, bytes]], clients: int, total: int) -> tuple[list[float], float]:
    """Latencies (s) of `total` requests from `clients` threads, and the wall time of all of them."""
    latencies: list[float] = []
    counter = iter(range(total))
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                name, data = files[i % len(files)]
                start = time.perf_counter()
                reply = session.post(url + "/predict", files={"file": (name, data)}, timeout=120)
                reply.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "tl_core", "serve", str(args.run_dir), "--port", str(port), "--device", "cpu"],
                              cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        wait_up(url)
        files = pictures(args.run_dir)
        load(url, files, args.clients, 2 * args.clients)  # warm-up
        before = requests.get(url + "/health", timeout=10).json()
        latencies, wall = load(url, files, args.clients, args.requests)
        after = requests.get(url + "/health", timeout=10).json()
    finally:
        server.terminate()
        server.wait(10)
    q = statistics.quantiles(latencies, n=20)
    result = {"clients": args.clients, "requests": len(latencies), "requests_per_s": round(len(latencies) / wall, 1),
              "p50_ms": round(statistics.median(latencies) * 1e3, 1), "p95_ms": round(q[18] * 1e3, 1),
              "requests_per_batch": round((after["requests"] - before["requests"]) / max(1, after["batches"] - before["batches"]), 2)}
    print(json.dumps(result) if args.json else
          f"{result['requests']} requests from {args.clients} clients: {result['requests_per_s']} requests/s, "
          f"p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, {result['requests_per_batch']} requests per forward pass")


if __name__ == "__main__":
    main()
