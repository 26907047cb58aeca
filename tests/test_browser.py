"""One real browser: `streamlit run` + headless Chromium through dataset -> backbone -> train -> predict."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / "test-artifacts" / "screenshots"

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path, studio_home):
    from tl_core.demo import demo_root

    home = tmp_path / "home"
    home.mkdir()
    (home / "demo-v1").symlink_to(demo_root())
    port = free_port()
    env = {**os.environ, "TL_STUDIO_HOME": str(home), "TL_STUDIO_RUNS": str(tmp_path / "runs"),
           "TORCH_HOME": str(tmp_path / "torch")}
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
            break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("streamlit did not start: " + (tmp_path / "server.log").read_text()[-2000:])
    yield url
    proc.terminate()
    proc.wait(10)


def select_option(page, label: str, value: str, attempts: int = 4) -> None:
    """Pick `value` in a Streamlit selectbox: type it while the app is idle, wait until the filtered list starts
    with it, press Enter, verify; retry when a slow machine let a rerun or the filter lag get in the way."""
    from playwright.sync_api import expect

    box = page.get_by_role("combobox", name=label)
    for _ in range(attempts):
        expect(page.get_by_test_id("stStatusWidget")).to_be_hidden()  # no rerun may repaint it mid-typing
        box.click()
        box.fill("")
        box.press_sequentially(value, delay=20)
        try:
            expect(page.get_by_role("option").first).to_have_text(value, timeout=10_000)  # the filter has applied
        except AssertionError:
            page.keyboard.press("Escape")
            continue
        box.press("Enter")
        page.wait_for_timeout(300)
        if box.input_value() == value:
            return
        page.keyboard.press("Escape")
    expect(box).to_have_value(value)


def test_whole_flow_in_a_real_browser(server):
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {SHOTS}")
    demo_star = sorted((Path(os.environ["TL_STUDIO_HOME"]) / "demo-v1" / "val" / "star").iterdir())[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)
        page.goto(server)
        expect(page.get_by_text("Fine-tune a pretrained ImageNet backbone")).to_be_visible()
        nav = page.get_by_test_id("stSidebar")
        expect(nav.get_by_role("link", name="Predict")).to_be_visible()  # the frame is drawn
        labels = [t.strip().splitlines()[-1] for t in nav.get_by_role("link").all_inner_texts()]  # drop icon names
        assert labels == ["Home", "Dataset", "Backbones", "Train", "Predict"], labels  # each page once, in order
        page.screenshot(path=SHOTS / "home.png", full_page=True)

        nav.get_by_role("link", name="Dataset").click()
        page.get_by_role("button", name="Use the demo dataset").click()
        expect(page.get_by_test_id("stMetric").filter(has_text="Classes")).to_contain_text("5")
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        page.screenshot(path=SHOTS / "dataset.png", full_page=True)

        nav.get_by_role("link", name="Backbones").click()
        expect(page.get_by_test_id("stAlertContentSuccess").filter(has_text="Recommended")).to_be_visible()
        select_option(page, "Backbone for training", "mobilenet_v3_small")
        page.get_by_role("button", name="Use for training").click()
        expect(page.get_by_test_id("stAlertContentSuccess").filter(has_text="mobilenet_v3_small selected")).to_be_visible()
        page.screenshot(path=SHOTS / "backbones.png", full_page=True)

        nav.get_by_role("link", name="Train").click()
        page.get_by_text("Full fine-tune").click()
        expect(page.get_by_label("Epochs", exact=True)).to_have_value("5")  # the strategy's own default follows it
        page.get_by_label("Epochs", exact=True).fill("12")
        page.get_by_label("Epochs", exact=True).press("Enter")
        page.get_by_text("More settings", exact=True).click()
        page.get_by_test_id("stCheckbox").filter(has_text="Pretrained weights").click()
        page.get_by_label("Image size", exact=True).fill("48")
        page.get_by_label("Image size", exact=True).press("Enter")
        page.get_by_label("Early-stopping patience", exact=True).fill("0")
        page.get_by_label("Early-stopping patience", exact=True).press("Enter")
        time.sleep(1)
        page.get_by_role("button", name="Start training").click()
        chart = page.locator(".js-plotly-plot").first
        expect(chart).to_be_visible(timeout=120_000)
        progress = page.get_by_test_id("stProgress").first

        def epoch() -> int:
            m = re.search(r"epoch (\d+)/12", progress.inner_text())
            return int(m.group(1)) if m else 0

        first, points = epoch(), chart.locator("path.point").count()
        deadline = time.time() + 120
        while (epoch() <= first or chart.locator("path.point").count() <= points) and time.time() < deadline:
            time.sleep(0.5)
        assert epoch() > first, "the live progress did not move"
        assert page.locator(".js-plotly-plot").first.locator("path.point").count() > points, "the live chart did not change"
        page.screenshot(path=SHOTS / "train-live.png", full_page=True)
        job_title = page.get_by_role("heading", name=re.compile(r"Job 1")).inner_text()

        page.reload()  # the run lives in the server, not in the page
        expect(page.get_by_role("heading", name=re.compile(r"Job 1"))).to_be_visible()
        assert page.get_by_role("heading", name=re.compile(r"Job 1")).inner_text().split(":")[0] == job_title.split(":")[0]
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        expect(page.get_by_role("heading", name=re.compile(r"Job 1: finished"))).to_be_visible(timeout=240_000)
        page.screenshot(path=SHOTS / "train-done.png", full_page=True)

        nav.get_by_role("link", name="Predict").click()
        page.locator("input[type=file]").first.set_input_files(str(demo_star))
        top = page.get_by_test_id("stMarkdown").filter(has_text=re.compile(r"\(\d+\.\d%\)"))
        expect(top.first).to_be_visible()
        assert re.search(r"(circle|cross|square|star|triangle) \(\d+\.\d%\)", top.first.inner_text())
        shown = page.get_by_test_id("stImage").locator("img").first
        expect(shown).to_be_visible()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=shown.element_handle())
        page.screenshot(path=SHOTS / "predict.png", full_page=True)

        page.get_by_role("tab", name="Evaluate the run").click()
        page.get_by_role("button", name="Evaluate on the validation split").click()
        matrix = page.get_by_test_id("stPlotlyChart").filter(has_text="Confusion matrix")
        expect(matrix).to_be_visible()
        caption = page.get_by_text(re.compile(r"image\(s\) of \w+ predicted as \w+"))
        before = caption.inner_text()
        classes = ["circle", "cross", "square", "star", "triangle"]
        shown_true, shown_pred = re.search(r"of (\w+) predicted as (\w+)", before).groups()
        counts = [int(t) for t in matrix.locator(".textpoint").all_text_contents()]  # row-major: true x predicted
        current = classes.index(shown_true) * len(classes) + classes.index(shown_pred)
        target = next(i for i, n in enumerate(counts) if n and i != current)  # another cell with images
        matrix.locator("path.point").nth(target).click(force=True)
        expect(caption).not_to_have_text(before)  # the click chose another cell and its images
        page.screenshot(path=SHOTS / "evaluate.png", full_page=True)
        browser.close()
