"""The first request to a fresh server is a deep link: a bookmarked page with its lab, a page address without
one, and a settings change that must survive a restart. In real Chromium against `streamlit run app.py`.

Streamlit decides once per process whether a `pages/` folder means its old multipage mode; until app.py has
run, a request for `/train` would run pages/train.py alone (no lab, helper modules listed as pages). After a
restart every open tab of a workshop is such a request. Skipped, saying why, without Chromium.
"""

import urllib.parse

import pytest

from tests import browser
from tests.test_browser_lab import server  # noqa: F401 - the fixture: a server to kill and restart

pytestmark = pytest.mark.browser
TITLES = ["Home", "Model", "Data", "Freeze & BatchNorm", "Train", "Compare", "Transfer study", "CAM & Grad-CAM",
          "SE channel weights", "Attention", "Feature maps", "Layer responses", "Export & Netron", "Concepts", "Class"]


def _nav(page) -> list[str]:
    links = page.locator('[data-testid="stSidebarNav"] a').all()
    return [link.inner_text().split("\n")[-1].strip() for link in links]


def _opened(page, heading: str) -> None:
    page.get_by_role("heading", name=heading).first.wait_for(timeout=90_000)
    browser.wait_idle(page)
    assert browser.exceptions(page) == []
    assert _nav(page) == TITLES  # the app's pages, not the helper modules of pages/
    assert page.get_by_text("Current lab").count() >= 1  # app.py ran: the sidebar is drawn


def _lab(page) -> str:
    return urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)["lab"][0]


def test_a_bookmarked_page_is_the_first_request_after_a_restart(server):
    from tests.test_browser import use_sample  # the same steps as the main walk

    url = server.start()
    with browser.browser_page() as page:
        page.goto(url)
        _opened(page, "vislab — the transfer-learning lab")
        lab = _lab(page)
        use_sample(page)
        page.get_by_text("Dataset: textile sample").first.wait_for(timeout=120_000)
        browser.wait_idle(page)
        page.locator('[data-testid="stSidebarNav"]').get_by_text("Train", exact=True).click()
        page.get_by_role("heading", name="Train").wait_for(timeout=60_000)
        browser.wait_idle(page)
        box = page.get_by_label("Epochs", exact=True)
        box.fill("7")
        box.press("Enter")
        browser.wait_idle(page)
        page.wait_for_timeout(1500)  # the lab is written at the end of the run
    server.stop()
    url = server.start()  # a restart: the bookmark is the server's very first request
    with browser.browser_page() as page:
        page.goto(f"{url}/train?lab={lab}")
        _opened(page, "Train")
        assert _lab(page) == lab
        page.get_by_text("Runs of this lab").first.wait_for(timeout=60_000)
        assert page.get_by_label("Epochs", exact=True).input_value() == "7"  # a setting kept by the lab
    server.stop()
    url = server.start()
    with browser.browser_page() as page:
        page.goto(f"{url}/export?lab={lab}")
        _opened(page, "Export & Netron")
        assert _lab(page) == lab
        page.reload()  # and a reload of it
        _opened(page, "Export & Netron")


def test_a_bare_page_address_is_the_first_request(server):
    url = server.start()
    with browser.browser_page() as page:
        page.goto(f"{url}/cam")  # no lab in the address: a new lab, and the CAM page through app.py
        _opened(page, "CAM & Grad-CAM")
        from vislab.serving import labs

        assert labs.valid_id(_lab(page))
        assert "/cam" in page.url
