"""The Predict page in a real browser: the Grad-CAM overlay of an upload and the folder batch table."""

import re

import pytest
from helpers import BROWSER, CHROMIUM, SHOTS

pytestmark = BROWSER


@pytest.fixture
def demo_data_root(monkeypatch, tmp_path):
    """A trained run in the server's runs folder, and the demo images as its data root (before the server starts)."""
    from tl_core.config import TrainConfig
    from tl_core.data.demo import demo_root
    from tl_core.train.trainer import train

    train("demo", TrainConfig(backbone="mobilenet_v3_small", pretrained=False, strategy="full", epochs=1, batch_size=16,
                              image_size=48, patience=0), tmp_path / "runs")
    monkeypatch.setenv("TL_STUDIO_DATA_ROOT", str(demo_root().parent))
    return demo_root()


def test_grad_cam_overlay_and_batch_table(demo_data_root, server):
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    star = sorted((demo_data_root / "val" / "star").iterdir())[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        expect.set_options(timeout=90_000)
        page.goto(server)
        page.get_by_test_id("stSidebar").get_by_role("link", name="Predict").click()
        page.locator("input[type=file]").first.set_input_files(str(star))
        overlay = page.get_by_test_id("stImage").filter(has_text=re.compile("Grad-CAM: evidence for")).locator("img")
        expect(overlay).to_be_visible()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=overlay.element_handle())
        expect(page.get_by_text(re.compile(r"\(\d+\.\d%\)")).first).to_be_visible()
        page.screenshot(path=SHOTS / "predict-grad-cam.png", full_page=True)

        page.get_by_role("tab", name="Folder or zip").click()
        page.get_by_test_id("stRadioGroup").get_by_text("Folder on the server").click()
        folder = page.get_by_label(re.compile("Folder inside"))
        folder.fill(f"{demo_data_root.name}/val/star")
        folder.press("Enter")
        page.get_by_role("button", name="Classify all").click()
        panel = page.get_by_role("tabpanel", name="Folder or zip")
        expect(panel.get_by_text(re.compile(r"^16 files classified: "))).to_be_visible()
        expect(panel.get_by_test_id("stDataFrame")).to_be_visible()
        expect(panel.get_by_role("button", name="Download results (CSV)")).to_be_visible()
        page.screenshot(path=SHOTS / "predict-batch.png", full_page=True)
        browser.close()


def test_live_camera_classifies_the_fake_webcam_continuously(demo_data_root, server):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        expect.set_options(timeout=90_000)
        page.goto(server)
        page.get_by_test_id("stSidebar").get_by_role("link", name="Predict").click()
        page.get_by_text("Live camera").click()
        view = page.frame_locator("iframe[title*='live_camera']")
        overlay = view.locator("#overlay")
        expect(overlay).to_have_text(re.compile(r"\d+\.\d frames/s"))
        page.wait_for_function(  # frames keep coming: at least five answered
            "() => { const f = document.querySelector(\"iframe[title*='live_camera']\");"
            " const o = f && f.contentDocument.querySelector('#overlay'); return o && Number(o.dataset.frames) >= 5; }",
            timeout=120_000)
        lines = overlay.inner_text().splitlines()
        classes = {"circle", "cross", "square", "star", "triangle"}
        assert lines[0] in classes | {"Unsure / none of these"}
        assert {ln.rsplit("  ", 1)[0] for ln in lines[1:-1]} <= classes and len(lines[1:-1]) == 3  # top-3 with probabilities
        assert float(lines[-1].split()[0]) > 0
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SHOTS / "predict-live-camera.png", full_page=True)
        browser.close()
