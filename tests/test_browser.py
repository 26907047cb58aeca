"""One real browser: `streamlit run` + headless Chromium through dataset -> backbone -> train -> predict.

Every page and state of the tour is saved as a screenshot under test-artifacts/screenshots/; with
TL_STUDIO_DOCS_SHOTS=1 the test also refreshes the small copies in docs/screenshots/ that README links to.
"""

import os
import re
import time
from pathlib import Path

from helpers import BROWSER, CHROMIUM, MOBILENET_FILE, ROOT, SHOTS

DOCS_SHOTS = ROOT / "docs" / "screenshots"

pytestmark = BROWSER


def shot(page, name: str) -> None:
    """A full-page screenshot; for the docs also a smaller copy (1000 px wide, 256 colours: tens of kB)."""
    from PIL import Image
    from playwright.sync_api import expect

    SHOTS.mkdir(parents=True, exist_ok=True)
    expect(page.get_by_test_id("stStatusWidget")).to_be_hidden()  # the page has finished drawing
    size = page.viewport_size
    tall = page.evaluate("() => Math.max(...[...document.querySelectorAll('section, div')].map(e => e.scrollHeight))")
    charts = page.locator(".js-plotly-plot").count()
    page.set_viewport_size({"width": size["width"], "height": min(max(tall, size["height"]), 5000)})  # the page scrolls inside
    page.wait_for_timeout(1500)  # let plotly and the data grids redraw at the new size
    page.wait_for_function("n => document.querySelectorAll('.js-plotly-plot .main-svg').length >= n", arg=charts,
                           timeout=20_000)  # a live fragment may be redrawing its chart: wait until it is back
    page.screenshot(path=SHOTS / f"{name}.png")
    page.set_viewport_size(size)
    if os.environ.get("TL_STUDIO_DOCS_SHOTS") == "1":
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        img = Image.open(SHOTS / f"{name}.png").convert("RGB")
        img = img.resize((1000, round(img.height * 1000 / img.width)), Image.LANCZOS)
        img.quantize(256, method=Image.Quantize.MEDIANCUT).save(DOCS_SHOTS / f"{name}.png", optimize=True)


def plotly_data(chart, trace: str) -> list:
    """The y values of the named trace, as the browser's plotly holds them."""
    return chart.evaluate("(el, name) => { const p = el.querySelector('.js-plotly-plot') || el;"
                          " const t = (p.data || []).find(d => d.name === name); return t ? Array.from(t.y) : []; }", trace)


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


def test_whole_flow_in_a_real_browser(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

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
        for n, title in enumerate(("Data", "Backbone", "Train and use"), start=1):
            expect(page.locator(f".st-key-step_{n}")).to_contain_text(f"{n}. {title}")
        expect(page.get_by_role("button", name=re.compile("Quick start: train"))).to_be_visible()
        shot(page, "home")

        nav.get_by_role("link", name="Dataset").click()
        page.get_by_role("button", name="Use the demo dataset").click()
        expect(page.get_by_test_id("stMetric").filter(has_text="Classes")).to_contain_text("5")
        expect(page.get_by_text("Image sizes: all 380 images are 96 x 96 pixels.")).to_be_visible()
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        expect(nav.get_by_text("demo (shapes)")).to_be_visible()  # the sidebar names the dataset
        shot(page, "dataset")

        nav.get_by_role("link", name="Backbones").click()  # offline, nothing cached: say exactly what to do
        offline = page.get_by_test_id("stAlertContentSuccess").filter(has_text="Recommended")
        expect(offline).to_contain_text("not on this machine yet")
        expect(offline).to_contain_text("hub/checkpoints")
        expect(page.get_by_test_id("stPlotlyChart").filter(has_text="ImageNet accuracy against compute")).to_be_visible()
        shot(page, "backbones-offline")
        select_option(page, "Backbone for training", "mobilenet_v3_small")
        page.get_by_role("button", name="Use for training").click()
        expect(page.get_by_test_id("stAlertContentSuccess").filter(has_text="mobilenet_v3_small selected")).to_be_visible()
        shot(page, "backbones")

        nav.get_by_role("link", name="Train").click()
        expect(page.get_by_role("button", name="Start training")).to_be_visible()
        page.get_by_text("More settings", exact=True).click()
        expect(page.get_by_test_id("stTooltipIcon").first).to_be_visible()  # every setting carries its help
        shot(page, "train-idle")
        page.get_by_role("button", name="Start training").click()  # pretrained features, weights missing: fails clearly
        expect(page.get_by_role("heading", name=re.compile(r"Job 1: failed"))).to_be_visible(timeout=120_000)
        expect(page.get_by_test_id("stAlertContentError").filter(has_text="mobilenet_v3_small")).to_be_visible()
        assert page.locator(".js-plotly-plot").count() == 0  # no empty chart with made-up axes
        shot(page, "train-failed")

        page.get_by_text("Full fine-tune").click()
        expect(page.get_by_label("Epochs", exact=True)).to_have_value("5")  # the strategy's own default follows it
        page.get_by_text("More settings", exact=True).click()
        page.get_by_label("Epochs", exact=True).fill("3")
        page.get_by_label("Epochs", exact=True).press("Enter")
        page.get_by_test_id("stCheckbox").filter(has_text="Pretrained weights").click()
        page.get_by_label("Image size", exact=True).fill("32")
        page.get_by_label("Image size", exact=True).press("Enter")
        page.get_by_label("Batch size", exact=True).fill("16")
        page.get_by_label("Batch size", exact=True).press("Enter")
        page.get_by_label("Early-stopping patience", exact=True).fill("0")
        page.get_by_label("Early-stopping patience", exact=True).press("Enter")
        time.sleep(1)
        page.get_by_role("button", name="Start training").click()
        expect(page.get_by_role("heading", name=re.compile(r"Job 2"))).to_be_visible()
        chart = page.get_by_test_id("stPlotlyChart").first
        expect(chart).to_be_visible(timeout=180_000)  # drawn with the first training step
        first = len(plotly_data(chart, "train loss (smoothed)"))
        deadline = time.time() + 120
        while len(plotly_data(page.get_by_test_id("stPlotlyChart").first, "train loss (smoothed)")) <= first and time.time() < deadline:
            time.sleep(0.5)
        assert len(plotly_data(page.get_by_test_id("stPlotlyChart").first, "train loss (smoothed)")) > first, \
            "the live loss curve did not move"
        shot(page, "train-running")
        job_title = page.get_by_role("heading", name=re.compile(r"Job 2")).inner_text()

        page.reload()  # the run lives in the server, not in the page
        expect(page.get_by_role("heading", name=re.compile(r"Job 2"))).to_be_visible()
        assert page.get_by_role("heading", name=re.compile(r"Job 2")).inner_text().split(":")[0] == job_title.split(":")[0]
        expect(page.get_by_role("heading", name=re.compile(r"Job 2: finished"))).to_be_visible(timeout=300_000)
        expect(page.get_by_test_id("stMetric").filter(has_text="Best val accuracy")).to_contain_text(re.compile(r"\d+\.\d%"))
        expect(page.get_by_test_id("stPlotlyChart").filter(has_text="Validation accuracy")).to_be_visible()
        shot(page, "train-finished")

        if MOBILENET_FILE.exists():  # real ImageNet weights: Quick start takes the demo to a good model in one click
            ckpt = tmp_path / "torch" / "hub" / "checkpoints"  # the server's TORCH_HOME (same tmp_path)
            ckpt.mkdir(parents=True, exist_ok=True)
            (ckpt / "mobilenet_v2-b0353104.pth").symlink_to(MOBILENET_FILE)
            nav.get_by_role("link", name="Backbones").click()
            select_option(page, "Backbone for training", "mobilenet_v2")
            page.get_by_role("button", name="Use for training").click()
            expect(page.get_by_test_id("stAlertContentSuccess").filter(has_text="mobilenet_v2 selected")).to_be_visible()
            nav.get_by_role("link", name="Home").click()
            expect(page.locator(".st-key-step_3")).to_contain_text("Last trained")  # step 3 done after the first run
            page.get_by_role("button", name="Quick start: train mobilenet_v2 on demo (shapes)").click()
            expect(page.get_by_role("heading", name=re.compile(r"Job 3: finished"))).to_be_visible(timeout=300_000)
            best = page.get_by_test_id("stMetric").filter(has_text="Best val accuracy").get_by_test_id("stMetricValue")
            assert float(best.inner_text().rstrip("%")) > 80  # pretrained features: far above chance (20%)
            shot(page, "train-quick-start")

        nav.get_by_role("link", name="Predict").click()
        page.locator("input[type=file]").first.set_input_files(str(demo_star))
        top = page.get_by_test_id("stMarkdown").filter(has_text=re.compile(r"\(\d+\.\d%\)"))
        expect(top.first).to_be_visible()
        assert re.search(r"(circle|cross|square|star|triangle) \(\d+\.\d%\)", top.first.inner_text())
        shown = page.get_by_test_id("stImage").locator("img").first
        expect(shown).to_be_visible()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=shown.element_handle())
        bars = page.get_by_test_id("stPlotlyChart").first
        expect(bars.locator("text.bartext")).to_have_count(3)  # every top-k bar carries its probability
        shot(page, "predict")

        page.get_by_role("tab", name="Evaluate the run").click()
        page.get_by_role("button", name="Evaluate on the validation split").click()
        matrix = page.get_by_test_id("stPlotlyChart").filter(has_text="Confusion matrix")
        expect(matrix).to_be_visible()
        expect(matrix.locator(".annotation-text")).to_have_count(25)  # count and row % in every cell
        caption = page.get_by_text(re.compile(r"\d+ images? of \w+ predicted as \w+"))
        before = caption.inner_text()
        classes = ["circle", "cross", "square", "star", "triangle"]
        shown_true, shown_pred = re.search(r"of (\w+) predicted as (\w+)", before).groups()
        texts = matrix.locator(".js-plotly-plot").evaluate("el => el.layout.annotations.map(a => a.text)")  # row-major
        counts = [int(re.match(r"<b>(\d+)</b>", t).group(1)) for t in texts]
        current = classes.index(shown_true) * len(classes) + classes.index(shown_pred)
        target = next(i for i, n in enumerate(counts) if n and i != current)  # another cell with images
        matrix.locator("path.point").nth(target).click(force=True)  # the cell's text lets clicks through
        expect(caption).not_to_have_text(before)  # the click chose another cell and its images
        expect(matrix.locator(".annotation-text").first).to_have_css("opacity", "1")  # nothing faded
        page.mouse.move(5, 5)  # no hover label over the matrix in the screenshot
        shot(page, "predict-evaluate")
        browser.close()
