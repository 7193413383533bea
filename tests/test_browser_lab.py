"""The lab keeps a person's work, in a real browser: a reload mid-run, a server killed and restarted, a second
browser with no link. Skipped, saying why, without Chromium."""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests import browser
from tests.test_app import _zip_of

pytestmark = pytest.mark.browser
SHOTS = Path(os.environ.get("VISLAB_SCREENSHOTS") or tempfile.mkdtemp(prefix="vislab-shots-"))
if not SHOTS.is_absolute():
    SHOTS = browser.REPO / SHOTS


class Server:
    """`streamlit run app.py` that a test can kill with SIGKILL (a crash, not a goodbye) and start again."""

    def __init__(self, home: Path):
        self.home = home
        self.proc = None
        self.url = ""

    def start(self, timeout: float = 90) -> str:
        port = browser.free_port()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(browser.REPO / "app.py"), "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1"], cwd=browser.REPO,
            env={**os.environ, "VISLAB_HOME": str(self.home)}, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=1) as r:
                    if r.status == 200:
                        return self.url
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("streamlit did not start")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def server(vislab_home):
    reason = browser.why_unavailable()
    if reason:
        pytest.skip(reason)
    s = Server(vislab_home)
    yield s
    s.stop()


def _go(page, title):
    page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
    page.get_by_role("heading", name=title).wait_for(timeout=60_000)
    browser.wait_idle(page)


def _lab_of(page) -> str:
    return urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)["lab"][0]


def _start_long_run(page, epochs: int = 150):
    """Train with a fresh random view every epoch (the full loop), at 64 px: long enough to act mid-run."""
    _go(page, "Train")
    box = page.get_by_label("Epochs", exact=True)
    box.fill(str(epochs))
    box.press("Enter")
    browser.wait_idle(page)
    size = page.get_by_role("slider").nth(1)  # image size: 224 -> 64
    for _ in range(5):
        size.press("ArrowLeft")
        page.wait_for_timeout(150)
    browser.wait_idle(page)
    page.get_by_text("64", exact=True).first.wait_for(timeout=10_000)
    assert page.get_by_label("Epochs", exact=True).input_value() == str(epochs)
    page.get_by_role("button", name="Start training").click()
    # the bar shows each epoch for about a second: wait on the run's own files, then for the bar
    from vislab.serving import jobs, labs

    runs_dir = labs.Lab(_lab_of(page)).runs_dir
    deadline = time.time() + 300
    while time.time() < deadline:
        found = jobs.list_jobs(runs_dir)
        if found and found[0].active and len(found[0].metrics()) >= 2:
            break
        time.sleep(0.3)
    else:
        raise AssertionError("the long run never reached its second epoch")
    page.get_by_test_id("stMainBlockContainer").get_by_text(re.compile(rf"epoch \d+/{epochs}")).first.wait_for(
        timeout=30_000)


def _runs_listed(page) -> str:
    """The runs the Train page offers to reopen (the table is a canvas; the picker is text)."""
    page.get_by_role("heading", name="Runs of this lab").scroll_into_view_if_needed()
    browser.wait_idle(page)
    picker = page.locator('[data-testid="stSelectbox"]').filter(has_text="Reopen a run")
    picker.locator("input").click()
    names = " ".join(page.get_by_role("option").all_inner_texts())
    page.keyboard.press("Escape")
    return names


def test_a_lab_survives_reload_restart_and_crash_and_stays_private(server, synthetic, tmp_path):
    from vislab.serving import claims, jobs, labs

    archive = tmp_path / "shapes.zip"
    archive.write_bytes(_zip_of(synthetic))
    url = server.start()
    with browser.browser_page(height=1500) as page:
        page.goto(url)
        page.get_by_text("Strategy advisor").wait_for(timeout=60_000)
        browser.wait_idle(page)
        lab_id = _lab_of(page)
        assert labs.valid_id(lab_id)
        _go(page, "Data")
        page.get_by_text("A .zip of class folders").click()
        page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(archive))
        page.get_by_text("24 images, 3 classes").wait_for(timeout=60_000)  # read as soon as it is chosen
        page.get_by_text("h-flip", exact=True).click()
        browser.wait_idle(page)
        _start_long_run(page)

        # 1. a reload mid-run: the same dataset, live progress, a working Stop
        page.reload()
        page.get_by_role("heading", name="Train").wait_for(timeout=60_000)
        assert _lab_of(page) == lab_id
        sidebar = page.locator('[data-testid="stSidebar"]')
        sidebar.get_by_text("zip shapes.zip").wait_for(timeout=30_000)
        page.get_by_text("epoch ").first.wait_for(timeout=30_000)
        assert page.get_by_role("button", name="Start training").is_disabled()
        assert "training, epoch" in sidebar.inner_text() or "caching" in sidebar.inner_text()
        page.screenshot(path=str(SHOTS.joinpath("train_reloaded.png")), full_page=True)
        page.get_by_test_id("stMainBlockContainer").get_by_role("button", name="Stop").click()
        main = page.get_by_test_id("stMainBlockContainer")  # not the sidebar's run line ("stopped: ...")
        main.get_by_text(re.compile(r"^Stopped:")).wait_for(timeout=60_000)
        browser.wait_idle(page)
        assert browser.exceptions(page) == []
        first = jobs.list_jobs(labs.Lab(lab_id).runs_dir)[0]
        assert first.state == "stopped" and first.id in _runs_listed(page)

        # 2. the server is killed and started again: the same link lists the run and reopens it
        server.kill()
        url = server.start()
        page.goto(f"{url}/?lab={lab_id}")
        page.get_by_text("Strategy advisor").wait_for(timeout=60_000)
        _go(page, "Train")
        assert first.id in _runs_listed(page)
        page.get_by_role("button", name="Reopen").click()
        page.get_by_text(f"{first.id} —").wait_for(timeout=60_000)
        browser.wait_idle(page)
        assert page.get_by_text("Confusion matrix").count() or page.locator(".js-plotly-plot").count() >= 3
        assert browser.exceptions(page) == []
        _go(page, "CAM & Grad-CAM")  # the reopened run is the default model to look at
        assert page.get_by_role("radio", name="fine-tuned").is_checked()
        page.get_by_role("button", name="Compute").click()
        page.get_by_text("the crop the model saw").first.wait_for(timeout=120_000)
        browser.wait_idle(page)
        assert browser.exceptions(page) == []

        # 3. a crash mid-training: after the restart the run reads as interrupted, its best epoch kept
        _start_long_run(page)
        running = jobs.list_jobs(labs.Lab(lab_id).runs_dir)[0]
        worker = running.status()["pid"]
        server.kill()
        deadline = time.time() + 20
        while claims.worker_alive(worker) and time.time() < deadline:
            time.sleep(0.2)
        assert not claims.worker_alive(worker), "the worker outlived the server"
        url = server.start()
        page.goto(f"{url}/?lab={lab_id}")
        page.get_by_text("Strategy advisor").wait_for(timeout=60_000)
        _go(page, "Train")
        assert running.id in _runs_listed(page)
        page.get_by_text(f"{running.id} was interrupted").wait_for(timeout=30_000)
        page.get_by_test_id("stMainBlockContainer").get_by_text(re.compile(r"^Interrupted:")).wait_for(timeout=30_000)
        page.screenshot(path=str(SHOTS.joinpath("train_interrupted.png")), full_page=True)

        # 4. someone else, with no link: none of it
        other = page.context.browser.new_context().new_page()
        other.goto(url)
        other.get_by_text("Strategy advisor").wait_for(timeout=60_000)
        assert _lab_of(other) != lab_id
        _go(other, "Train")
        other.get_by_text("Pick a dataset on the").wait_for(timeout=30_000)
        assert other.get_by_text("No runs in this lab yet").count() == 1
        assert first.id not in other.content() and running.id not in other.content()
