"""The Transfer study page in a real browser (issue 24), on the bundled textile sample: a small grid of
MobileNetV2 at 64 px starts, its progress reads "row k of N", the accuracy-by-depth figure and the heatmap are
drawn while rows are still training, a reload mid-study finds it live, Stop keeps the finished rows and offers a
Resume, which trains the rest to the end. Screenshots study_*.png go where tests/test_browser.py puts them
(VISLAB_SCREENSHOTS=docs/screenshots refreshes the README's). Skipped, saying why, without Chromium.

Rows this small can finish faster than a page reloads, so once the first row is saved the test pauses the
study's worker (SIGSTOP): the reload and Stop then land mid-study on a fast machine as on a slow one, and
SIGCONT lets it go on to honour the Stop.
"""

import contextlib
import fcntl
import os
import re
import signal
import time

import pytest

from tests import browser
from tests.test_browser import SHOTS, _go, _shot, app_url, use_sample  # noqa: F401 - app_url is a fixture
from tests.test_browser_lab import _lab_of
from tests.test_browser_projector import _wide_enough

pytestmark = pytest.mark.browser

DEPTHS = {"0 (head only)", "1"}  # the depths kept of the page's defaults
ROWS = 6  # 1 seed x 2 fractions (25 %, 100 %) x (depths 0 and 1, and scratch): the page's other defaults
WIDTH = 1400
DEPTH_TITLE = "mobilenet_v2: what to thaw"
HEATMAP_TITLE = "Mean best validation accuracy"


def _main(page):
    return page.get_by_test_id("stMainBlockContainer")  # not the sidebar (its own run line and Stop)


def _keep_only(page, label: str, keep: set[str]) -> None:
    """Remove every chosen value of the multiselect `label` but those shown as `keep`."""
    box = page.locator('[data-testid="stMultiSelect"]').filter(has_text=label)
    chosen = [t.get_attribute("aria-label") for t in box.locator("[data-tag]").all()]
    assert keep <= set(chosen), chosen
    for value in chosen:
        if value not in keep:
            box.locator(f'[aria-label="Remove {value}"]').click()
            browser.wait_idle(page)
    assert {t.get_attribute("aria-label") for t in box.locator("[data-tag]").all()} == keep


def _small_grid(page) -> None:
    """Depths 0 and 1 of MobileNetV2, 1 seed, 1 epoch at 64 px; 25 % and 100 % of the images and the scratch
    reference as the page offers them."""
    _keep_only(page, "Thaw depths", DEPTHS)
    fractions = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Training images used")
    assert {t.get_attribute("aria-label") for t in fractions.locator("[data-tag]").all()} == {"25%", "100%"}
    for label in ("Seeds", "Epochs per run"):
        box = page.get_by_role("spinbutton", name=label, exact=True)
        box.fill("1")
        box.press("Enter")
        browser.wait_idle(page)
    size = page.locator('[data-testid="stSlider"]').filter(has_text="Image size").get_by_role("slider")
    for _ in range(5):  # 224 -> 64
        size.press("ArrowLeft")
        page.wait_for_timeout(150)
    browser.wait_idle(page)
    _main(page).get_by_text(f"{ROWS} runs", exact=True).wait_for(timeout=10_000)  # the caption counts the grid
    assert "1 epoch(s) each" in _main(page).inner_text()
    assert [page.get_by_role("spinbutton", name=label, exact=True).input_value()
            for label in ("Seeds", "Epochs per run")] == ["1", "1"]
    assert page.locator('[data-testid="stSlider"]').filter(has_text="Image size").get_by_test_id(
        "stSliderThumbValue").inner_text() == "64"


def _study_job(lab_id: str):
    from vislab.serving import jobs, labs

    found = [j for j in jobs.list_jobs(labs.Lab(lab_id).runs_dir) if j.payload().get("kind") == "study"]
    return found[0] if found else None  # the newest


def _wait(cond, timeout: float, what: str, every: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := cond():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _status_unlocked(job) -> bool:
    """Whether nobody holds the lock of the job's status.json (a worker paused holding it would hang Stop)."""
    path = job.folder / ".status.json.lock"
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing releases it


@contextlib.contextmanager
def _paused_after_first_row(job):
    """Pause the study's worker once its first row is in study.json (and not while it writes its status);
    continue it when the block ends, whatever happened in it. Yields the number of rows saved."""
    from vislab.training import study

    pid = _wait(lambda: job.status().get("pid"), 120, "the study's worker")
    _wait(lambda: (s := study.load(job.folder)) is not None and s.rows, 180, "the first row")
    for _ in range(50):
        os.kill(pid, signal.SIGSTOP)
        if _status_unlocked(job):
            break
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.02)
    try:
        saved = study.load(job.folder)
        assert job.active and len(saved.rows) < ROWS, "the study ended before it could be paused"
        yield len(saved.rows)
    finally:
        os.kill(pid, signal.SIGCONT)


def _whole_page(page, name: str) -> None:
    """A full-width screenshot of everything on the page: the window made as tall as the page's content (the
    app scrolls inside its own container, so a full-page shot alone stops at the window)."""
    height = page.evaluate("""() => Math.max(...[...document.querySelectorAll(
        '[data-testid="stMain"], [data-testid="stAppViewContainer"], [data-testid="stSidebar"]')].map(
        e => e.scrollHeight))""")
    before = page.viewport_size
    page.set_viewport_size({"width": WIDTH, "height": max(900, min(height + 40, 8000))})
    page.wait_for_timeout(800)  # the charts follow the new size
    _shot(page, name)
    page.set_viewport_size(before)


def _figures(page) -> list[str]:
    """The titles of the plotly figures on the page."""
    return [t.text_content() for t in page.locator(".js-plotly-plot .gtitle").all()]


def _both_figures(page) -> None:
    page.locator(".js-plotly-plot .gtitle").filter(has_text=HEATMAP_TITLE).wait_for(timeout=60_000)
    titles = _figures(page)
    assert any(t.startswith(DEPTH_TITLE) for t in titles), titles
    assert any(t.startswith(HEATMAP_TITLE) for t in titles), titles


def _table_rows(page) -> int:
    """Rows of the results table (its grid is a canvas; its accessibility table counts the rows + header)."""
    grid = _main(page).locator('[data-testid="stDataFrame"] table[role="grid"]').first
    return int(grid.get_attribute("aria-rowcount")) - 1


def _rows_offered(page) -> list[str]:
    """The rows the 'Open a row as a run' picker offers: the finished ones, by name."""
    picker = page.locator('[data-testid="stSelectbox"]').filter(has_text="Open a row as a run")
    picker.scroll_into_view_if_needed()
    picker.locator("input").click()
    page.get_by_role("option").first.wait_for(timeout=10_000)
    names = page.get_by_role("option").all_inner_texts()
    page.keyboard.press("Escape")
    return names


def test_a_study_runs_live_survives_a_reload_and_stops_keeping_its_rows(app_url):  # noqa: F811
    from vislab.training import study

    with browser.browser_page(width=WIDTH, height=1600) as page:
        page.goto(app_url)
        page.get_by_text("Strategy advisor").wait_for(timeout=60_000)
        browser.wait_idle(page)
        lab_id = _lab_of(page)
        use_sample(page)
        page.get_by_text("Dataset: textile sample").first.wait_for(timeout=60_000)
        browser.wait_idle(page)
        _go(page, "Transfer study")
        _small_grid(page)
        assert browser.exceptions(page) == []

        # 1. the study starts: one job, its progress row by row, Start disabled while it runs
        page.get_by_role("button", name="Start the study").click()
        job = _wait(lambda: _study_job(lab_id), 30, "the study job")
        row_of = re.compile(rf"^row \d+ of {ROWS}: ")
        main = _main(page)
        main.get_by_text(row_of).wait_for(timeout=120_000)
        assert page.get_by_role("button", name="Start the study").is_disabled()

        # 2. rows finish: the two figures are drawn while the rest still trains
        with _paused_after_first_row(job) as saved:
            _both_figures(page)
            assert job.active and main.get_by_text(row_of).count() == 1

            # 3. a reload mid-study: the same lab, still live (its progress, then the finished rows' figures)
            page.reload()
            page.get_by_role("heading", name="Transfer study").wait_for(timeout=60_000)
            assert _lab_of(page) == lab_id
            main.get_by_text(row_of).wait_for(timeout=30_000)
            _both_figures(page)
            assert page.get_by_role("button", name="Start the study").is_disabled()
            assert browser.exceptions(page) == []
            _whole_page(page, "study_running")

            # 4. Stop, asked while the worker is paused: the page says it is stopping
            main.get_by_role("button", name="Stop", exact=True).click()
            main.get_by_text("Stopping after this batch").wait_for(timeout=30_000)
        _wait(lambda: not job.active, 120, "the study to stop")
        assert job.state == "stopped", job.status()
        kept = study.load(job.folder)
        names = [r.point.name for r in kept.rows]
        assert saved <= len(names) < ROWS, names

        # 5. the finished rows are kept: the table and the row picker list them, Resume offers the rest
        main.get_by_text(f"Stopped with {len(names)} of {ROWS} rows finished (they are kept). "
                         "Resume trains the rest.").wait_for(timeout=60_000)
        browser.wait_idle(page)
        assert browser.exceptions(page) == []
        _both_figures(page)
        resume = main.get_by_role("button", name=f"Resume: train the missing rows ({ROWS - len(names)})")
        assert resume.is_enabled()
        _whole_page(page, "study_stopped")
        assert _table_rows(page) == len(names)
        assert sorted(_rows_offered(page)) == sorted(names)

        # 6. Resume trains only the missing rows, into the same study, to the end
        resume.click()
        main.get_by_text(f"Done: {ROWS} rows of mobilenet_v2").wait_for(timeout=240_000)
        browser.wait_idle(page)
        assert browser.exceptions(page) == []
        done = study.load(job.folder)
        assert len(done.rows) == ROWS and not done.missing()
        assert _table_rows(page) == ROWS
        _both_figures(page)
        _whole_page(page, "study_done")

        # 7. the same page on a projector: 1280 x 720, the figure on the wall, nothing wider than the screen
        page.set_viewport_size({"width": 1280, "height": 720})
        page.reload()
        page.get_by_role("heading", name="Transfer study").wait_for(timeout=60_000)
        page.locator(".js-plotly-plot .gtitle").filter(has_text=DEPTH_TITLE).wait_for(timeout=60_000)
        browser.wait_idle(page)
        assert browser.exceptions(page) == []
        _wide_enough(page)
        page.locator(".js-plotly-plot").first.evaluate(  # the figure at the top, its title below the app's bar
            "e => { e.style.scrollMarginTop = '70px'; e.scrollIntoView({block: 'start'}); }")
        page.wait_for_timeout(500)
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "study_1280.png"))
