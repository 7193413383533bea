"""Joining a class, as the room sees it: a server on every interface (`--server.address 0.0.0.0`) opens Home
with "Join this lab", this machine's address in large type and its QR code, large enough to scan (that the
code decodes back to the address is tests/test_joining.py's). In real
Chromium against `streamlit run app.py`; the screenshot is the README's (VISLAB_SCREENSHOTS=docs/screenshots).
Skipped, saying why, without Chromium."""

import pytest

from tests import browser
from tests.test_browser import SHOTS
from vislab.serving import joining

pytestmark = pytest.mark.browser


def test_home_served_to_a_room_shows_the_join_address_and_its_qr_code():
    if why := browser.why_unavailable():
        pytest.skip(why)
    urls = joining.join_urls("0.0.0.0", 0)  # the port is only part of the text; the hosts are what we check
    with browser.streamlit_server(address="0.0.0.0") as (url, _), browser.browser_page(1280, 720) as page:
        page.goto(url)
        page.get_by_role("heading", name="Join this lab").wait_for(timeout=90_000)
        browser.wait_idle(page)
        assert browser.exceptions(page) == []
        if not urls:  # a machine with no reachable address: the page says so instead of a code
            assert page.get_by_text("no address that another machine could reach").count() == 1
            return
        port = url.rsplit(":", 1)[1]
        shown = page.get_by_role("heading", level=2).filter(has_text=f":{port}").first.inner_text().strip()
        assert shown.startswith("http://") and shown.split("//")[1].split(":")[0] in {u.split("//")[1].split(":")[0]
                                                                                     for u in urls}, shown
        code = page.locator('[data-testid="stImage"] img').first
        assert page.get_by_text("Scan to join").count() == 1
        assert code.evaluate("img => img.naturalWidth") >= 300  # large enough to scan from the back of a room
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "home_join_1280.png"))
