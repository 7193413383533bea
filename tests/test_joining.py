"""Joining a class's lab: which addresses the server's setting gives, the QR code of one, and Home's join screen."""

import io
import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
import segno
from PIL import Image
from streamlit import config
from streamlit.config_option import ConfigOption
from streamlit.testing.v1 import AppTest

from vislab.serving import joining

APP = Path(__file__).resolve().parents[1] / "app.py"


@pytest.mark.parametrize("host", [None, "", "127.0.0.1", "127.0.1.1", "localhost", "app.localhost", "::1", "[::1]"])
def test_a_loopback_or_unset_address_has_no_join_address(host):
    assert joining.is_loopback(host)
    assert joining.join_urls(host, 8501) == []


def test_every_interface_means_this_machines_reachable_addresses_in_order():
    local = ["192.168.1.20", "127.0.1.1", "fe80::1", "10.0.0.5", "192.168.1.20", "224.0.0.1", "::1", "fd00::2"]
    assert joining.join_urls("0.0.0.0", 8501, local=local) == [
        "http://192.168.1.20:8501/", "http://10.0.0.5:8501/", "http://[fd00::2]:8501/"]


def test_every_interface_on_this_machine_gives_only_its_reachable_addresses():
    urls = joining.join_urls("0.0.0.0", 8502)
    for url in urls:  # a machine without a network has none: then Home says so
        parts = urlsplit(url)
        ip = ipaddress.ip_address(parts.hostname)
        assert ip.version == 4 and not ip.is_loopback and not ip.is_link_local
        assert parts.port == 8502 and parts.path == "/"
    assert len(set(urls)) == len(urls)


@pytest.mark.parametrize("host, url", [
    ("10.1.2.3", "http://10.1.2.3:8501/"),
    ("gpu.example.org", "http://gpu.example.org:8501/"),
    ("2001:db8::5", "http://[2001:db8::5]:8501/"),
    ("[2001:db8::5]", "http://[2001:db8::5]:8501/"),
])
def test_a_named_address_is_the_one_address_to_join(host, url):
    assert joining.join_urls(host, 8501, local=["192.168.1.20"]) == [url]


def test_the_base_path_is_part_of_the_address():
    assert joining.join_urls("10.1.2.3", 80, "/vislab/") == ["http://10.1.2.3:80/vislab/"]


def test_qr_png_decodes_back_to_the_url_and_is_big_enough_for_a_projector():
    url = "http://192.168.100.200:8501/"
    png = joining.qr_png(url)
    image = Image.open(io.BytesIO(png))
    symbol = segno.make(url, error="m", micro=False)
    side = (symbol.symbol_size(border=0)[0] + 2 * joining.QR_BORDER) * joining.QR_SCALE
    assert image.format == "PNG" and image.size == (side, side) and side >= 320
    gray = np.asarray(image.convert("L"))
    assert gray[0, 0] == 255 and gray.min() == 0  # dark on white, a white quiet zone at the edge
    decoded, _, _ = cv2.QRCodeDetector().detectAndDecode(gray)
    assert decoded == url


def test_a_short_url_is_still_a_full_qr_code_not_a_micro_one():
    png = joining.qr_png("http://a:1/")  # segno alone would make a Micro QR of this
    decoded, _, _ = cv2.QRCodeDetector().detectAndDecode(np.asarray(Image.open(io.BytesIO(png)).convert("L")))
    assert decoded == "http://a:1/"


@pytest.fixture
def served():
    """Home as a server started with `streamlit run app.py --server.address … --server.port …` shows it: the
    options are set where that command line sets them (the page reads them with st.get_option), and put
    back after the test."""
    saved = {}

    def home(**options) -> AppTest:
        for name, value in options.items():
            saved.setdefault(f"server.{name}", config.get_option(f"server.{name}"))
            config.set_option(f"server.{name}", value, where_defined="command-line")
        at = AppTest.from_file(str(APP), default_timeout=120).run()
        assert not at.exception
        return at

    yield home
    for key, value in saved.items():
        config.set_option(key, value, where_defined=ConfigOption.DEFAULT_DEFINITION)


def test_home_served_to_a_room_shows_the_address_and_its_qr_code(served):
    at = served(address="10.1.2.3", port=8600)
    assert [h.value for h in at.main.header] == ["http://10.1.2.3:8600/"]
    assert "Join this lab" in [s.value for s in at.subheader]
    [image] = at.main.get("image")
    assert image.proto.imgs[0].url.endswith(".png")  # sent as it was made: a JPEG would blur the modules
    assert any("own private lab" in m.value for m in at.markdown)
    assert not any("Serving a class?" in c.value for c in at.caption)


def test_home_served_on_every_interface_shows_this_machines_address_or_says_it_has_none(served):
    at = served(address="0.0.0.0")
    assert "Join this lab" in [s.value for s in at.subheader]
    expected = joining.join_urls("0.0.0.0", 8501)
    if expected:
        assert [h.value for h in at.main.header] == expected[:1]
    else:
        assert any("no address that another machine could reach" in w.value for w in at.warning)


def test_home_on_loopback_shows_no_join_screen_only_how_to_serve_a_class(served):
    at = served(address="127.0.0.1")
    assert "Join this lab" not in [s.value for s in at.subheader]
    assert not at.main.header and not at.main.get("image")
    assert any("--server.address 0.0.0.0" in c.value for c in at.caption)
