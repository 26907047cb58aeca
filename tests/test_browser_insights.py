"""The browser sees the compare chart (Backbones) and the mislabel gallery with its Drop button (Dataset)."""

from pathlib import Path

import pytest
from helpers import BROWSER, CHROMIUM, SHOTS

pytestmark = BROWSER


@pytest.fixture
def server_weights(tmp_path, real_weights) -> Path:
    """The real MobileNetV2 file where the `server` fixture points TORCH_HOME (requested before `server`)."""
    ckpt = tmp_path / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "mobilenet_v2-b0353104.pth").symlink_to(real_weights / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth")
    return ckpt


def set_number(page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True)  # not the "Help for ..." button of its tooltip
    box.fill(value)
    box.press("Enter")
    page.wait_for_timeout(500)


def test_compare_chart_and_mislabel_gallery(server_weights, server):
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)
        page.goto(server)
        nav = page.get_by_test_id("stSidebar")
        expect(nav).to_be_visible()

        nav.get_by_role("link", name="Backbones").click()
        expect(page.get_by_text("Which backbone for your data")).to_be_visible()
        set_number(page, "Image size (0 = the weights' own)", "64")
        page.get_by_role("button", name="Compare 1 backbone on this dataset").click()
        chart = page.get_by_test_id("stPlotlyChart").filter(has_text="Accuracy on your data")
        expect(chart).to_be_visible(timeout=240_000)
        expect(chart.locator("path.point").first).to_be_visible()
        expect(page.get_by_text("Recommended for this dataset: mobilenet_v2")).to_be_visible()
        page.screenshot(path=SHOTS / "compare.png", full_page=True)

        nav.get_by_role("link", name="Dataset").click()
        expect(page.get_by_text("Data health")).to_be_visible()
        set_number(page, "Image size for the check (0 = the weights' own)", "64")
        page.get_by_role("button", name="Check labels, duplicates and outliers").click()
        expect(page.get_by_test_id("stMetric").filter(has_text="Likely mislabelled")).to_be_visible(timeout=240_000)
        card = page.locator(".st-key-suspect_0")
        expect(card.get_by_text("suggested")).to_be_visible()
        expect(card.get_by_test_id("stImage").locator("img")).to_be_visible()
        emap = page.get_by_test_id("stPlotlyChart").filter(has_text="Embedding map")
        expect(emap).to_be_visible()
        expect(emap.locator("image").first).to_be_attached()  # the pictures drawn on the map
        point = emap.locator("path.point").first
        point.scroll_into_view_if_needed()
        box = point.bounding_box()  # Plotly picks the point under its own drag layer: click where it is drawn
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        expect(page.get_by_text("1 selected")).to_be_visible()
        page.screenshot(path=SHOTS / "embedding-map.png", full_page=True)
        card.get_by_role("button", name="Drop").click()
        expect(page.locator(".st-key-suspect_0").get_by_text("dropped")).to_be_visible()
        assert list((Path(server_weights).parents[2] / "home" / "overrides").glob("*.json"))  # saved beside, not in, the data
        page.screenshot(path=SHOTS / "data-health.png", full_page=True)
        browser.close()
