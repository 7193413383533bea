"""The Class page in a real browser (issue 25, item 2, its done-criterion): two named participants with a finished
run each on different data; without the key, or with a wrong one, nothing is listed; the instructor with the key
sees both with their datasets and accuracies, live (a lab that appears while the page is open is counted
without a reload), and opens one run read-only. Screenshot class_1280.png goes where tests/test_browser.py
puts them (VISLAB_SCREENSHOTS=docs/screenshots refreshes the README's). Skipped, saying why, without Chromium.

The two labs and their runs are made as tests/test_classroom.py makes them (the worker's own runner, tiny
model, a few images), so the test spends its time in the browser, not training."""

import re
import time

import pytest

from tests import browser
from tests.test_browser import _shot
from tests.test_browser_lab import _lab_of
from tests.test_classroom import KEY, NAMES, _best, class_of_two, two_labs  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser


@pytest.fixture
def class_server(vislab_home, two_labs):  # noqa: F811 - the fixture imported above
    reason = browser.why_unavailable()
    if reason:
        pytest.skip(reason)
    with browser.streamlit_server({"VISLAB_HOME": str(vislab_home), "VISLAB_INSTRUCTOR_KEY": KEY}) as (url, _):
        yield url, two_labs[0]


def _main(page):
    return page.get_by_test_id("stMainBlockContainer")


def _type_key(page, key: str) -> None:
    box = page.get_by_label("Instructor key")
    box.fill(key)
    page.get_by_role("button", name="Open the class").click()
    browser.wait_idle(page)


def _options(page) -> str:
    picker = page.locator('[data-testid="stSelectbox"]').filter(has_text="Open a run read-only")
    picker.locator("input").click()
    names = " ".join(page.get_by_role("option").all_inner_texts())
    page.keyboard.press("Escape")
    return names


def test_the_instructor_sees_both_labs_live_and_opens_a_run_read_only(class_server):
    from vislab.serving import labs

    url, (a, b) = class_server
    with browser.browser_page(width=1280, height=1000) as page:
        page.goto(url)  # a fresh server's first request: see the report on /class as a first request
        page.get_by_text("Current lab").first.wait_for(timeout=90_000)
        browser.wait_idle(page)
        page.goto(f"{url}/class?lab={_lab_of(page)}")
        page.get_by_role("heading", name="Class").first.wait_for(timeout=90_000)
        browser.wait_idle(page)
        assert page.get_by_label("Instructor key").get_attribute("type") == "password"
        text = _main(page).inner_text()
        assert "Lovelace" not in text and "Hopper" not in text
        _type_key(page, "not the key")  # a wrong key: refused, nothing listed
        _main(page).get_by_text("Wrong key.").wait_for(timeout=10_000)
        text = _main(page).inner_text()
        assert "Lovelace" not in text and "Hopper" not in text and page.locator('[data-testid="stDataFrame"]').count() == 0
        assert "not the key" not in page.content() and KEY not in page.url

        _type_key(page, KEY)
        _main(page).get_by_text("Leaderboards: one per dataset", exact=False).wait_for(timeout=30_000)
        assert browser.exceptions(page) == []
        text = _main(page).inner_text()
        assert "3 labs on this server" in text  # the two participants, and this browser's own lab
        assert "stripes (zip) · 3 classes · 24 images" in text and "two stripes (zip) · 2 classes · 12 images" in text
        offered = _options(page)
        for lab_id, name in ((a, NAMES[0]), (b, NAMES[1])):
            assert f"{name} · test_resnet · head · {100 * _best(lab_id):.1f}%" in offered
        assert a not in page.content() and b not in page.content() and KEY not in page.content()

        late = labs.create()  # a participant who joins while the page is open: counted without a reload
        late.write_state({"lab_name": "Alan"})
        _main(page).get_by_text("4 labs on this server").wait_for(timeout=15_000)

        picker = page.locator('[data-testid="stSelectbox"]').filter(has_text="Open a run read-only")
        picker.locator("input").click()
        page.get_by_role("option").filter(has_text=NAMES[0]).click()
        _main(page).get_by_text("Where it looks: Grad-CAM of validation images").wait_for(timeout=120_000)
        browser.wait_idle(page)
        assert browser.exceptions(page) == []
        text = _main(page).inner_text()
        assert f"Best validation accuracy {100 * _best(a):.1f}%" in text
        assert "Top losses" in text and "Run folder" not in text and str(labs.labs_dir()) not in text
        assert page.get_by_role("button", name="Start training").count() == 0
        assert page.locator('[data-testid="stFileUploader"]').count() == 0
        assert a not in page.content()
        time.sleep(1)
        _shot(page, "class_1280")

    with browser.browser_page(width=1280, height=900) as page:  # another browser: the key is asked again
        page.goto(f"{url}/class")
        page.get_by_label("Instructor key").wait_for(timeout=90_000)
        browser.wait_idle(page)
        text = _main(page).inner_text()
        assert "Lovelace" not in text and "Hopper" not in text and "labs on this server" not in text


def test_a_participant_training_in_a_browser_shows_on_the_class_page_live(class_server):
    """The whole loop as a workshop runs it: a participant types their name and trains in their own browser
    (the textile sample, head only, through the app's queue and worker) while the instructor's Class page is
    open in another browser; the instructor sees the name, the job running and then done with its accuracy,
    without reloading."""
    from tests.test_browser import start_training, use_sample

    url, _ = class_server
    with browser.browser_page(width=1280, height=1000) as teacher:
        pupil = teacher.context.browser.new_context(viewport={"width": 1400, "height": 900}).new_page()  # a
        # browser of its own: its own cookies and Streamlit session, as a participant's laptop
        teacher.goto(f"{url}/class")
        teacher.get_by_label("Instructor key").wait_for(timeout=90_000)
        browser.wait_idle(teacher)
        _type_key(teacher, KEY)
        _main(teacher).get_by_text("Leaderboards: one per dataset", exact=False).wait_for(timeout=30_000)

        pupil.goto(url)
        pupil.get_by_text("Current lab").first.wait_for(timeout=90_000)
        browser.wait_idle(pupil)
        box = pupil.get_by_label("Your name", exact=True)
        box.fill("Katherine")
        box.press("Enter")
        browser.wait_idle(pupil)
        use_sample(pupil)
        pupil.get_by_text("Dataset: textile sample").first.wait_for(timeout=120_000)
        browser.wait_idle(pupil)
        start_training(pupil, epochs=2)

        table = _main(teacher).locator('[data-testid="stDataFrame"]').first  # the live table, never reloaded
        deadline = time.time() + 240
        seen = set()
        while time.time() < deadline and "done" not in seen:
            text = table.inner_text() if table.count() else ""
            rows = [line for line in text.splitlines() if "Katherine" in line] or [
                r.inner_text() for r in table.locator('table[role="grid"] tr').all() if "Katherine" in r.inner_text()]
            for row in rows:
                seen |= {word for word in ("queued", "running", "done") if word in row}
            time.sleep(0.5)
        assert "done" in seen, f"the Class page never showed Katherine's run as done: {seen}"
        assert seen & {"queued", "running"}, f"the run was never seen before it finished: {seen}"
        assert browser.exceptions(teacher) == []
        _main(teacher).get_by_text(re.compile(r"^textile sample .* · 3 classes · 60 images")).wait_for(
            timeout=15_000)  # its own leaderboard (the fragment draws the table first, the boards after it)
        browser.wait_idle(teacher)
        cells = _main(teacher).locator('[role="gridcell"]').filter(has_text="Katherine")
        assert cells.count() >= 2, cells.count()  # in the live table and on the textile sample's leaderboard
