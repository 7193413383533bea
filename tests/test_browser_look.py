"""Looking inside, in a real browser: the attention head trained on the textile sample (its class-token
attention beside Grad-CAM), then what each layer of MobileNetV2 responds to, from the stem to the last stage.

Screenshots go where tests/test_browser.py puts them (VISLAB_SCREENSHOTS=docs/screenshots refreshes the
README's). Skipped, saying why, without Chromium or without the seeded MobileNetV2 weights.
"""

import re

import pytest

from tests import browser
from tests.test_browser import _done, _go, _shot, app_url, start_training, use_sample  # noqa: F401 - app_url is a fixture

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _seeded() -> bool:
    from vislab.models import catalog, weights

    return weights.status("mobilenet_v2", catalog.source_of("mobilenet_v2")).available


def test_attention_head_and_layer_responses_in_chromium(app_url):  # noqa: F811
    if not _seeded():
        pytest.skip("no seeded mobilenet_v2 weights here: run bash scripts/setup.sh")
    with browser.browser_page(height=2900) as page:
        page.goto(app_url)
        page.get_by_text("Strategy advisor").wait_for(timeout=60_000)
        use_sample(page)
        page.get_by_text("Dataset: textile sample").wait_for(timeout=60_000)
        browser.wait_idle(page)

        _go(page, "Freeze & BatchNorm")
        page.get_by_text("Trainable parameters").wait_for(timeout=60_000)
        page.locator('[data-testid="stRadio"]').filter(has_text="Head").get_by_text("attention", exact=True).click()
        browser.wait_idle(page)
        assert browser.exceptions(page) == []

        start_training(page, 4)
        try:
            page.get_by_text(re.compile(r"best val acc \d")).wait_for(timeout=300_000)
        except Exception:
            _shot(page, "look_train_failed")
            raise
        browser.wait_idle(page)
        assert browser.exceptions(page) == []

        _go(page, "Attention")  # the fine-tuned model of this run: it has the attention head
        cell = page.get_by_text(re.compile(r"one cell is \d+×\d+ pixels"))
        cell.first.wait_for(timeout=120_000)  # the grid cell in pixels: 32×32 for MobileNetV2 at 224 px
        assert "rows sum to 1" in cell.first.inner_text().lower()
        _done(page, "Grad-CAM", "attention_head", timeout=120_000)

        page.locator('[data-testid="stSidebarNav"]').get_by_text("Layer responses", exact=True).click()
        page.get_by_role("heading", name="What each layer responds to").wait_for(timeout=60_000)
        browser.wait_idle(page)
        page.get_by_text("bundled photos", exact=True).click()  # colour photos: colours and edges vs objects
        browser.wait_idle(page)
        per_stage = page.get_by_role("slider").first  # channels per stage: 8 -> 2, so every stage fits the shot
        per_stage.focus()
        for _ in range(6):
            page.keyboard.press("ArrowLeft")
        browser.wait_idle(page)
        page.get_by_role("button", name="Find the top patches").click()
        page.get_by_text(re.compile(r"images scanned in [\d.]+ s")).wait_for(timeout=300_000)
        browser.wait_idle(page)
        assert browser.exceptions(page) == []
        text = page.inner_text("body")
        fields = [int(m) for m in re.findall(r"receptive field (\d+)×\d+ px", text)]
        assert len(fields) >= 2 and fields == sorted(fields) and fields[0] < fields[-1], fields  # stem -> last
        _shot(page, "layers")
