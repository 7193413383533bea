"""The lab on a projector: 1280 × 720 in real Chromium, the view a workshop sees on the wall, as it is and
with the sidebar's projector mode on. Each screenshot is what fits on the screen (not the whole page), saved
as `<page>_1280.png` (projector mode: `<page>_projector_1280.png`) beside the full-width ones
(VISLAB_SCREENSHOTS=docs/screenshots refreshes the README's). Skipped, saying why, without Chromium."""

import pytest

from tests import browser
from tests.test_browser import SHOTS, _go, app_url, use_sample  # noqa: F401 - app_url is a fixture

pytestmark = pytest.mark.browser


def _text_px(page) -> float:
    """The font size of the page's first paragraph of text, in CSS pixels."""
    return page.evaluate("parseFloat(getComputedStyle(document.querySelector("
                         "'[data-testid=\"stMain\"] [data-testid=\"stMarkdownContainer\"] p')).fontSize)")


def _projector_on(page) -> None:
    """The sidebar's projector mode, switched on: the page's text grows by a quarter."""
    before = _text_px(page)
    page.locator('[data-testid="stSidebar"]').get_by_text("Projector mode", exact=True).click()
    browser.wait_idle(page)
    page.wait_for_timeout(500)
    assert _text_px(page) >= 1.2 * before, (before, _text_px(page))


def _wall(page, name: str, anchor: str | None = None) -> None:
    """The screen as projected: scrolled to `anchor` when given."""
    browser.wait_idle(page)
    assert browser.exceptions(page) == []
    if anchor:
        page.get_by_text(anchor).first.scroll_into_view_if_needed()
        page.wait_for_timeout(500)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}_1280.png"))


def _wide_enough(page) -> None:
    """Nothing wider than the screen: no chart or grid forces a sideways scroll at 1280 px."""
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a 1280 px screen"


@pytest.mark.parametrize("projector", [False, True], ids=["plain", "projector"])
def test_the_lab_at_1280_by_720(app_url, projector):
    mode = "_projector" if projector else ""
    with browser.browser_page(width=1280, height=720) as page:
        page.goto(app_url)
        page.get_by_text("Strategy advisor").wait_for(timeout=90_000)
        if projector:
            _projector_on(page)
        _wall(page, f"home{mode}")
        _wide_enough(page)

        use_sample(page)
        page.get_by_text("Dataset: textile sample").first.wait_for(timeout=120_000)
        _go(page, "Freeze & BatchNorm")
        page.get_by_text("Trainable parameters").wait_for(timeout=60_000)
        _wall(page, f"freeze{mode}", "Stages")
        _wide_enough(page)

        _go(page, "Train")
        box = page.get_by_label("Epochs", exact=True)
        box.fill("1")
        box.press("Enter")
        browser.wait_idle(page)
        page.get_by_role("button", name="Start training").click()
        page.get_by_text("Top losses").first.wait_for(timeout=240_000)
        _wall(page, f"train{mode}", "Top losses")
        _wide_enough(page)

        _go(page, "CAM & Grad-CAM")
        page.get_by_role("button", name="Compute").click()
        page.get_by_text("the crop the model saw").first.wait_for(timeout=120_000)
        _wall(page, f"cam{mode}", "the crop the model saw")
        _wide_enough(page)

        _go(page, "Feature maps")
        page.get_by_text("side by side", exact=True).click()
        page.get_by_text("Relative change").first.wait_for(timeout=90_000)
        _wall(page, f"features{mode}", "Relative change")
        _wide_enough(page)
