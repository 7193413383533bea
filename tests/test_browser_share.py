"""A shared run in real Chromium: the owner shares a finished run from the Train page, a stranger (a second
browser context: no cookies, no session, no link but this one) opens it and sees the run and nothing of the
lab in the page's HTML or address, cannot reach the lab's pages from it, and after the owner revokes the link
is told so. The stranger's view is saved as `share_1280.png` (VISLAB_SCREENSHOTS=docs/screenshots refreshes
the README's). Skipped, saying why, without Chromium."""

import json
import re
import shutil
import urllib.parse

import pytest

from tests import browser
from tests.test_browser import SHOTS
from tests.test_browser_lab import _go, server  # noqa: F401 - the fixture: a server to start and stop
from tests.test_share_page import OTHER, OWNER_NAME, RUN, _trained

pytestmark = pytest.mark.browser


def _query(url: str) -> dict:
    return urllib.parse.parse_qs(urllib.parse.urlparse(url).query)


def test_a_stranger_opens_a_shared_run_and_sees_nothing_else_of_the_lab(server, synthetic, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    from vislab.serving import labs, shares

    lab = labs.create()  # the owner's lab: a name, two finished runs, the first reopened on the Train page
    lab.write_state({"model_name": "test_resnet", "lab_name": OWNER_NAME, "reopened": RUN})
    for name in (RUN, OTHER):
        shutil.copytree(_trained(synthetic, tmp_path_factory), lab.runs_dir / name)
    best = max(m["val_acc"] for m in json.loads((lab.runs_dir / RUN / "metrics.json").read_text()))
    url = server.start()
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=browser.CHROMIUM, headless=True, args=browser.CHROMIUM_ARGS)
        try:
            owner = chromium.new_context(viewport={"width": 1400, "height": 1500}).new_page()
            owner.goto(f"{url}/?lab={lab.id}")
            owner.get_by_text("Strategy advisor").wait_for(timeout=90_000)
            _go(owner, "Train")
            main = owner.get_by_test_id("stMainBlockContainer")
            main.get_by_text(f"{RUN} —").wait_for(timeout=60_000)
            main.get_by_role("button", name="Share this run").click()
            code = main.locator('[data-testid="stCode"]')
            code.wait_for(timeout=30_000)
            link = code.inner_text().strip()
            token = shares.token_of(lab, RUN)
            assert token and link == f"{url}/?share={token}", link  # absolute: the browser's own address
            assert browser.exceptions(owner) == []

            stranger = chromium.new_context(viewport={"width": 1280, "height": 720}).new_page()
            stranger.goto(link)
            stranger.get_by_text(f"Best validation accuracy {best:.1%}").wait_for(timeout=90_000)
            stranger.get_by_text("Where it looks: Grad-CAM").wait_for(timeout=90_000)
            browser.wait_idle(stranger)
            assert browser.exceptions(stranger) == []
            assert stranger.locator(".js-plotly-plot").count() >= 3  # curves, confusion matrix, per class
            html = stranger.content()
            leaked = [s for s in (lab.id, lab.id[:8], OWNER_NAME, OTHER, str(lab.folder), str(synthetic)) if s in html]
            assert not leaked, leaked
            assert _query(stranger.url) == {"share": [token]}
            assert stranger.locator('[data-testid="stSidebarNav"]').count() == 0  # no page to switch to
            assert stranger.locator('[data-testid="stSidebar"]').count() == 0  # no lab controls
            assert stranger.locator('[data-testid="stButton"]').count() == 0  # nothing to start or stop
            SHOTS.mkdir(parents=True, exist_ok=True)
            stranger.screenshot(path=str(SHOTS / "share_1280.png"))  # the screen as a stranger first sees it

            # the address of a lab page with the token: still only the run; without it: a lab of one's own
            stranger.goto(f"{url}/train?share={token}")
            stranger.get_by_text(f"Best validation accuracy {best:.1%}").wait_for(timeout=90_000)
            assert stranger.get_by_role("heading", name="Train").count() == 0
            assert lab.id not in stranger.content()
            stranger.goto(f"{url}/train")
            stranger.get_by_role("heading", name="Train").wait_for(timeout=90_000)
            browser.wait_idle(stranger)
            mine = _query(stranger.url)["lab"][0]
            assert labs.valid_id(mine) and mine != lab.id and RUN not in stranger.content()

            # revoked: the owner's box offers Share again; the link says it was revoked, and shows nothing
            main.get_by_role("button", name="Revoke link").click()
            main.get_by_role("button", name="Share this run").wait_for(timeout=30_000)
            assert shares.token_of(lab, RUN) is None
            stranger.goto(link)
            stranger.get_by_text(re.compile("revoked by the owner")).wait_for(timeout=60_000)
            browser.wait_idle(stranger)
            assert stranger.get_by_text("Best validation accuracy").count() == 0
            assert stranger.locator(".js-plotly-plot").count() == 0
            assert stranger.get_by_role("link", name="Start your own lab").count() == 1
        finally:
            chromium.close()
