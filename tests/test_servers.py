"""Two lab servers, one lab home: two real `streamlit run app.py` processes on two ports share VISLAB_HOME, and
a lab link opened on either shows the same dataset and runs. A run started on one is followed, stopped and
reopened on the other, and only the server that claimed it ever ran it. Skipped, saying why, without Chromium."""

import re

import pytest

from tests import browser
from tests.test_app import _zip_of
from tests.test_browser_lab import Server, _go, _lab_of, _runs_listed, _start_long_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def two_servers(vislab_home):
    reason = browser.why_unavailable()
    if reason:
        pytest.skip(reason)
    a, b = Server(vislab_home), Server(vislab_home)
    yield a, b
    a.stop()
    b.stop()


def test_a_run_started_on_one_server_is_listed_stopped_and_opened_on_the_other(two_servers, synthetic, tmp_path):
    from vislab.serving import jobs, labs

    a, b = two_servers
    archive = tmp_path / "shapes.zip"
    archive.write_bytes(_zip_of(synthetic))
    url_a, url_b = a.start(), b.start()
    assert url_a != url_b
    with browser.browser_page(height=1500) as page:
        page.goto(url_a)
        page.get_by_text("Strategy advisor").wait_for(timeout=60_000)
        browser.wait_idle(page)
        lab_id = _lab_of(page)
        _go(page, "Data")
        page.get_by_text("A .zip of class folders").click()
        page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(archive))
        page.get_by_text("24 images, 3 classes").wait_for(timeout=60_000)
        page.get_by_text("h-flip", exact=True).click()
        browser.wait_idle(page)
        _start_long_run(page)
        job = jobs.list_jobs(labs.Lab(lab_id).runs_dir)[0]

        # the same link on the other server: same dataset, the run live, Stop works from there
        other = page.context.browser.new_context().new_page()
        other.goto(f"{url_b}/?lab={lab_id}")
        other.get_by_text("Strategy advisor").wait_for(timeout=60_000)
        _go(other, "Train")
        sidebar = other.locator('[data-testid="stSidebar"]')
        sidebar.get_by_text("zip shapes.zip").wait_for(timeout=30_000)
        assert other.get_by_role("button", name="Start training").is_disabled()  # the lab's job is A's
        assert "training, epoch" in sidebar.inner_text() or "caching" in sidebar.inner_text()
        main = other.get_by_test_id("stMainBlockContainer")
        main.get_by_role("button", name="Stop").click()
        main.get_by_text(re.compile(r"^Stopped:")).wait_for(timeout=90_000)
        browser.wait_idle(other)
        assert browser.exceptions(other) == [] and browser.exceptions(page) == []
        assert job.state == "stopped" and job.id in _runs_listed(other)
        other.get_by_role("button", name="Reopen").click()
        other.get_by_text(f"{job.id} —").wait_for(timeout=60_000)
        browser.wait_idle(other)
        assert browser.exceptions(other) == []

        # one server claimed and ran it: one worker, one run of events
        assert job.claimed_by()["pid"] == a.proc.pid
        assert [e["kind"] for e in job.events()].count("end") == 1
        assert len(jobs.list_jobs(labs.Lab(lab_id).runs_dir)) == 1

        # and back on the first server, the run the other stopped is listed there too
        page.reload()
        page.get_by_role("heading", name="Train").wait_for(timeout=60_000)
        browser.wait_idle(page)
        assert job.id in _runs_listed(page)
