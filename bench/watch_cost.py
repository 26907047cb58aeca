"""What watching a job costs the Streamlit server: its own CPU time while a demo job runs and a page follows it.

Starts `streamlit run streamlit_app.py` (a fresh TL Studio home, the built-in demo), opens the page in headless
Chromium (Playwright), starts a training job the way the page does (a child process, followed through its event
file), and samples the server process's CPU time (utime + stime from /proc) from the job's start to its end. The
child's own CPU is not the server's and is not counted. Also samples the same server with the page open and no job.

    python3 bench/watch_cost.py [--page app_pages/3_Train.py] [--epochs 20] [--json]

Prints the server's CPU as a share of one core while idle and while the job was watched (target: under 10%).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TICK = os.sysconf("SC_CLK_TCK")
SETTLE_S = 4.0


@dataclass(frozen=True)
class Cost:
    page: str
    idle_share: float  # server CPU seconds per wall second, page open, no job
    watched_share: float  # the same while the job ran, from SETTLE_S after the page was drawn to the job's end
    job_seconds: float


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, runs: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "TL_STUDIO_HOME": str(home), "TL_STUDIO_RUNS": str(runs)}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("streamlit did not start")


def share_over(pid: int, seconds: float) -> float:
    c, t = cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c) / (time.perf_counter() - t)


def measure(page_path: str, epochs: int) -> Cost:
    from playwright.sync_api import sync_playwright

    from tl_core.config import TrainConfig
    from tl_core.data.demo import demo_root
    from tl_core.jobs.manager import JobManager

    demo = demo_root()  # drawn once into the usual cache, shared by the fresh home below
    with tempfile.TemporaryDirectory() as tmp:
        home, runs = Path(tmp) / "home", Path(tmp) / "runs"
        home.mkdir()
        os.environ.update(TL_STUDIO_HOME=str(home), TL_STUDIO_RUNS=str(runs))
        (home / "demo-v1").symlink_to(demo)
        server, url = start_server(home, runs)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu",
                                                                            "--disable-dev-shm-usage"])
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(120_000)
                page.goto(url + ("/" + Path(page_path).stem.split("_", 1)[-1] if page_path != "streamlit_app.py" else ""))
                page.get_by_test_id("stSidebar").wait_for()
                time.sleep(5)  # the first render's work (scan, tables) is not watching
                idle = share_over(server.pid, 10)
                jobs = JobManager(runs, home)  # the page's manager reads the same job folder
                job = jobs.start("demo", TrainConfig(backbone="mobilenet_v3_small", pretrained=False, strategy="full",
                                                     image_size=64, epochs=epochs, patience=0))
                page.reload()  # the page sees the running job and follows it
                page.get_by_text(f"job {job.state.id}", exact=False).first.wait_for()  # the sidebar follows it: page drawn
                time.sleep(SETTLE_S)  # the reload's one full render is not the cost of watching
                c, t = cpu_seconds(server.pid), time.perf_counter()
                jobs.wait(job, 900)
                watched = (cpu_seconds(server.pid) - c) / (time.perf_counter() - t)
                took = time.perf_counter() - t
                browser.close()
        finally:
            server.terminate()
            server.wait(10)
    return Cost(page_path, round(idle, 3), round(watched, 3), round(took, 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--page", nargs="+", default=["app_pages/3_Train.py", "streamlit_app.py"])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    costs = [measure(page, a.epochs) for page in a.page]
    if a.json:
        print(json.dumps([asdict(c) for c in costs]))
        return
    print("| page open | server CPU, no job | server CPU while the job runs | job wall time (s) |")
    print("|---|---:|---:|---:|")
    for c in costs:
        print(f"| {c.page} | {c.idle_share:.1%} of a core | {c.watched_share:.1%} of a core | {c.job_seconds:.1f} |")


if __name__ == "__main__":
    main()
