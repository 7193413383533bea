"""Errors you can click, in a real browser: after one epoch on the textile sample, a click on a cell of the
Train page's confusion matrix opens that cell's images with Grad-CAM for the predicted and the true class,
and the "Show cell" box shows the clicked cell. Skipped, saying why, without Chromium or without the seeded
MobileNetV2 weights. Run under the shared browser lock (flock /tmp/w/browser.lock ...)."""

import re

import pytest

from tests import browser
from tests.test_browser import _shot, app_url, start_training, use_sample  # noqa: F401 - app_url is a fixture
from tests.test_browser_look import _seeded

pytestmark = [pytest.mark.browser, pytest.mark.slow]

FIND = """const confusion = () => [...document.querySelectorAll('.js-plotly-plot')].find(
    g => g.data && g.data[0] && g.data[0].type === 'heatmap' && (g.data[0].hovertemplate || '').startsWith('true '));
"""
CELL_CENTRE = """([row, col]) => {  // the centre of heatmap cell (row: true, col: predicted), in page pixels
""" + FIND + """
  const gd = confusion();
  const fl = gd._fullLayout, box = gd.getBoundingClientRect();
  return [box.left + fl._size.l + fl.xaxis.d2p(fl.xaxis._categories[col]),
          box.top + fl._size.t + fl.yaxis.d2p(fl.yaxis._categories[row])];
}"""


def _cells(page) -> tuple[list[str], list[list[int]]]:
    """The matrix's class names and counts, read from the chart the browser drew."""
    page.wait_for_function(f"() => {{ {FIND} return !!confusion(); }}", timeout=60_000)
    return page.evaluate("""() => {
""" + FIND + """
      const gd = confusion();
      const t = gd.data[0];
      return [t.x, t.text.map(r => r.map(s => parseInt(s)))];
    }""")


def test_a_click_on_a_confusion_matrix_cell_opens_its_images_in_chromium(app_url):  # noqa: F811
    if not _seeded():
        pytest.skip("no seeded mobilenet_v2 weights here: run bash scripts/setup.sh")
    with browser.browser_page(height=2400) as page:
        page.goto(app_url)
        page.get_by_text("Strategy advisor").wait_for(timeout=60_000)
        use_sample(page)
        page.get_by_text("Dataset: textile sample").wait_for(timeout=60_000)
        browser.wait_idle(page)
        start_training(page, 1)
        page.get_by_text(re.compile(r"best val acc \d")).wait_for(timeout=300_000)
        browser.wait_idle(page)
        page.get_by_text("Confusion matrix (validation)").first.wait_for(timeout=60_000)
        classes, counts = _cells(page)
        n = len(classes)
        cells = [(r, c) for r in range(n) for c in range(n) if counts[r][c]]
        row, col = max((rc for rc in cells if rc[0] != rc[1]), key=lambda rc: counts[rc[0]][rc[1]],
                       default=cells[0])  # an error cell when there is one
        x, y = page.evaluate(CELL_CENTRE, [row, col])
        page.mouse.click(x, y)
        browser.wait_idle(page)
        k = counts[row][col]
        said = page.get_by_text(re.compile(rf"^{k} validation images? (is|are) true {re.escape(classes[row])} and "
                                           rf"predicted {re.escape(classes[col])}"))
        try:
            said.first.wait_for(timeout=120_000)
        except Exception:
            _shot(page, "errors_click_failed")
            raise
        browser.wait_idle(page)
        assert browser.exceptions(page) == []
        box = page.locator('[data-testid="stSelectbox"]').filter(has_text="Show cell")
        inputs = box.locator("input")
        shown = (box.text_content() or "") + " " + (inputs.first.input_value() if inputs.count() else "")
        assert f"true {classes[row]} → predicted {classes[col]}" in shown, shown
        overlays = page.locator('[data-testid="stImage"]').filter(has_text="Grad-CAM for ")
        expected = min(k, 12) * (1 if row == col else 2)
        assert overlays.count() == expected, (overlays.count(), expected)
        if row != col:
            assert page.get_by_text(f"Grad-CAM for true {classes[row]}").count() == min(k, 12)
        said.first.scroll_into_view_if_needed()
        _shot(page, "train_errors_cell")
