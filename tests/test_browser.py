"""The whole app in a real browser (headless Chromium): Home -> Model -> Data -> Freeze -> Train.

Screenshots go to docs/screenshots/ (the README shows them). Skipped, saying why, without Chromium.
"""

import os
import tempfile
from pathlib import Path

import pytest

from tests import browser

pytestmark = pytest.mark.browser
# README screenshots are refreshed with VISLAB_SCREENSHOTS=docs/screenshots; otherwise they go to a temp folder
SHOTS = Path(os.environ.get("VISLAB_SCREENSHOTS") or tempfile.mkdtemp(prefix="vislab-shots-"))
if not SHOTS.is_absolute():
    SHOTS = browser.REPO / SHOTS


@pytest.fixture
def app_url(vislab_home):
    reason = browser.why_unavailable()
    if reason:
        pytest.skip(reason)
    with browser.streamlit_server({"VISLAB_HOME": str(vislab_home)}) as (url, _):
        yield url


def _go(page, title):
    page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
    page.get_by_role("heading", name=title).wait_for(timeout=60_000)
    browser.wait_idle(page)


def _done(page, text, name, timeout=120_000):
    """Wait for `text`, let the script finish, check no Streamlit exception, and take screenshot `name`."""
    page.get_by_text(text).first.wait_for(timeout=timeout)
    browser.wait_idle(page)
    assert browser.exceptions(page) == []
    _shot(page, name)


def _shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_walk_home_to_trained_head(app_url):
    with browser.browser_page(height=1600) as page:
        page.goto(app_url)
        _done(page, "Strategy advisor", "home", timeout=60_000)

        _go(page, "SE channel weights")  # mobilenet_v2 has none: the page stops early, the sidebar still shows
        page.get_by_text("has no Squeeze-and-Excitation").wait_for(timeout=60_000)
        browser.wait_idle(page)
        assert "Current lab" in page.locator('[data-testid="stSidebar"]').inner_text()

        _go(page, "Model")
        page.get_by_text("Real weights available").wait_for(timeout=60_000)
        assert browser.exceptions(page) == []
        _shot(page, "model")

        _go(page, "Data")
        slider = page.get_by_role("slider").first  # images per class: 60 -> 20, a quick CPU run
        slider.focus()
        page.keyboard.press("ArrowLeft")
        page.keyboard.press("ArrowLeft")
        page.get_by_text("20", exact=True).first.wait_for()
        page.get_by_role("button", name="Use the sample").click()
        _done(page, "Dataset: textile sample", "data", timeout=60_000)
        page.get_by_text("h-flip", exact=True).click()  # augmentation, with 3 fixed views to cache
        browser.wait_idle(page)
        views = page.get_by_role("spinbutton", name="Augmented views to cache per image")
        views.fill("3")
        views.press("Enter")
        page.get_by_text("view 2 (epoch 3").first.wait_for(timeout=60_000)
        browser.wait_idle(page)
        page.get_by_role("heading", name="Augmentations (training only)").scroll_into_view_if_needed()
        assert browser.exceptions(page) == []
        _shot(page, "augment")

        _go(page, "Freeze & BatchNorm")
        page.get_by_text("Trainable parameters").wait_for(timeout=60_000)
        page.locator('[data-testid="stSelectbox"]').filter(has_text="Strategy preset").locator("input").click()
        page.get_by_role("option", name="partial").click()
        last_n = page.get_by_label("Last N stages")
        last_n.fill("3")
        last_n.press("Enter")
        browser.wait_idle(page)
        page.get_by_role("button", name="Apply preset").click()
        page.get_by_text("strategy partial").first.wait_for(timeout=60_000)
        browser.wait_idle(page)
        assert browser.exceptions(page) == []
        _shot(page, "freeze")

        _go(page, "Train")
        epochs = page.get_by_label("Epochs")
        epochs.fill("2")
        epochs.press("Enter")
        browser.wait_idle(page)
        page.get_by_role("button", name="Start training").click()
        page.get_by_text("best val acc").wait_for(timeout=240_000)
        browser.wait_idle(page)
        assert browser.exceptions(page) == []
        assert page.get_by_text("Confusion matrix").count() or page.locator(".js-plotly-plot").count() >= 3
        _shot(page, "train")

        _go(page, "CAM & Grad-CAM")
        page.get_by_role("button", name="Compute").click()
        _done(page, "the crop the model saw", "cam", timeout=120_000)

        _go(page, "Feature maps")
        page.get_by_text("side by side", exact=True).click()
        _done(page, "Relative change", "features", timeout=60_000)

        _go(page, "Export & Netron")
        page.get_by_text("fine-tuned", exact=True).click()  # the model trained above
        browser.wait_idle(page)
        page.get_by_role("button", name="Export and verify").click()
        page.get_by_text("Download the file").wait_for(timeout=120_000)
        browser.wait_idle(page)
        assert browser.exceptions(page) == []
        with page.expect_download(timeout=60_000) as download:
            page.get_by_role("button", name="Download the file").click()
        saved = Path(download.value.path())
        import torch

        reloaded = torch.jit.load(str(saved))  # the downloaded file reloads outside the lab
        assert download.value.suggested_filename.startswith("mobilenet_v2_") and reloaded is not None
        netron = page.frame_locator("iframe").first
        accept = netron.get_by_text("Accept")
        if accept.count():
            accept.first.click()  # Netron's cookie notice
        netron.locator("#canvas, svg").first.wait_for(timeout=60_000)
        page.wait_for_timeout(2000)  # let Netron lay out the graph
        _shot(page, "export")

        _go(page, "SE channel weights")
        page.get_by_role("button", name="Switch to mobilenet_v3_small").click()
        _done(page, "Do the gates depend on the image?", "se", timeout=120_000)

        _go(page, "ViT attention")
        page.get_by_role("button", name="Switch to vit_tiny_patch16_224").click()
        _done(page, "Attention rows sum to 1", "attention", timeout=120_000)


def test_bad_uploads_show_their_report_in_chromium(app_url, tmp_path):
    """A zip of good and broken images lists every skipped file and why; an unsafe zip is refused."""
    from tests import test_robustness as bad

    entries = {**bad._good_entries(), "a/empty.png": b"", "a/cut.jpg": bad._truncated_jpeg(),
               "a/notes.jpg": b"not a picture", "a/readme.txt": b"hello", "b/anim.gif": bad._frames_gif(),
               "b/cmyk.jpg": bad._cmyk_jpeg(), "__MACOSX/a/._0.png": b"junk"}
    mixed = bad._zip(tmp_path, entries, name="mixed.zip")
    unsafe = bad._zip(tmp_path, {"a/ok.png": bad._png(), "../../evil.png": bad._png()}, name="unsafe.zip")
    with browser.browser_page(height=1600) as page:
        page.goto(app_url)
        page.get_by_text("Strategy advisor").wait_for(timeout=60_000)
        _go(page, "Data")
        page.get_by_text("A .zip of class folders").click()
        page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(mixed))
        page.get_by_role("button", name="Read the zip").click()
        page.get_by_text("4 files skipped (and why)").click()
        _done(page, "empty file (0 bytes)", "data_report", timeout=60_000)
        assert page.get_by_text("8 images, 2 classes").count()
        page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(unsafe))
        page.get_by_role("button", name="Read the zip").click()
        _done(page, "unsafe path '../../evil.png'", "data_unsafe_zip", timeout=60_000)
    assert not (tmp_path.parent / "evil.png").exists()


def test_four_strategies_compared_on_the_textile_sample(app_url):
    with browser.browser_page(height=1800) as page:
        page.goto(app_url)
        page.get_by_text("Strategy advisor").wait_for(timeout=60_000)
        _go(page, "Data")
        slider = page.get_by_role("slider").first  # 60 -> 20 images per class
        slider.focus()
        page.keyboard.press("ArrowLeft")
        page.keyboard.press("ArrowLeft")
        page.get_by_role("button", name="Use the sample").click()
        page.get_by_text("Dataset: textile sample").wait_for(timeout=60_000)
        browser.wait_idle(page)
        _go(page, "Compare")
        epochs = page.get_by_label("Epochs per run")
        epochs.fill("2")
        epochs.press("Enter")
        browser.wait_idle(page)
        size = page.get_by_role("slider").first  # image size 224 -> 128
        size.focus()
        for _ in range(3):
            page.keyboard.press("ArrowLeft")
        browser.wait_idle(page)
        page.get_by_role("button", name="Run comparison").click()
        _done(page, "Download the table (CSV)", "compare", timeout=300_000)
        _go(page, "Concepts")
        _done(page, "print(model)", "concepts", timeout=120_000)
