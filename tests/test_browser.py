"""The whole app in a real browser (headless Chromium): Home -> Model -> Data -> Freeze -> Train.

Screenshots go to docs/screenshots/ (the README shows them). Skipped, saying why, without Chromium.
"""

import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests import browser

pytestmark = pytest.mark.browser
# README screenshots are refreshed with VISLAB_SCREENSHOTS=docs/screenshots; otherwise they go to a temp folder
SHOTS = Path(os.environ.get("VISLAB_SCREENSHOTS") or tempfile.mkdtemp(prefix="vislab-shots-"))
if not SHOTS.is_absolute():
    SHOTS = browser.REPO / SHOTS


@pytest.fixture
def app_url(vislab_home):
    reason = browser.why_unavailable()
    if reason:
        pytest.skip(reason)
    with browser.streamlit_server({"VISLAB_HOME": str(vislab_home)}) as (url, _):
        yield url


def _go(page, title):
    page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
    page.get_by_role("heading", name=title).wait_for(timeout=60_000)
    browser.wait_idle(page)


def _done(page, text, name, timeout=120_000):
    """Wait for `text`, let the script finish, check no Streamlit exception, and take screenshot `name`."""
    page.get_by_text(text).first.wait_for(timeout=timeout)
    browser.wait_idle(page)
    assert browser.exceptions(page) == []
    _shot(page, name)


def use_sample(page):
    """On the Data page, the textile sample at 20 images per class (a quick CPU run)."""
    _go(page, "Data")
    slider = page.get_by_role("slider").first  # images per class: 60 -> 20
    slider.focus()
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    page.get_by_text("20", exact=True).first.wait_for()
    page.get_by_role("button", name="Use the sample").click()


def start_training(page, epochs: int):
    """On the Train page, set the epochs and press Start."""
    _go(page, "Train")
    box = page.get_by_label("Epochs")
    box.fill(str(epochs))
    box.press("Enter")
    browser.wait_idle(page)
    page.get_by_role("button", name="Start training").click()


def _shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_walk_home_to_trained_head(app_url):
    with browser.browser_page(height=1600) as page:
        page.goto(app_url)
        _done(page, "Strategy advisor", "home", timeout=60_000)

        _go(page, "SE channel weights")  # mobilenet_v2 has none: the page stops early, the sidebar still shows
        page.get_by_text("has no Squeeze-and-Excitation").wait_for(timeout=60_000)
        browser.wait_idle(page)
        assert "Current lab" in page.locator('[data-testid="stSidebar"]').inner_text()

        _go(page, "Model")
        page.get_by_text("Real weights available").wait_for(timeout=60_000)
        assert browser.exceptions(page) == []
        _shot(page, "model")

        use_sample(page)
        _done(page, "Dataset: textile sample", "data", timeout=60_000)
        page.get_by_text("h-flip", exact=True).click()  # augmentation, with 3 fixed views to cache
        browser.wait_idle(page)
        views = page.get_by_role("spinbutton", name="Augmented views to cache per image")
        views.fill("3")
        views.press("Enter")
        page.get_by_text("view 2 (epoch 3").first.wait_for(timeout=60_000)
        browser.wait_idle(page)
        page.get_by_role("heading", name="Augmentations (training only)").scroll_into_view_if_needed()
        assert browser.exceptions(page) == []
        _shot(page, "augment")

        _go(page, "Freeze & BatchNorm")
        page.get_by_text("Trainable parameters").wait_for(timeout=60_000)
        page.locator('[data-testid="stSelectbox"]').filter(has_text="Strategy preset").locator("input").click()
        page.get_by_role("option", name="partial").click()
        last_n = page.get_by_label("Last N stages", exact=True)
        last_n.fill("3")
        last_n.press("Enter")
        browser.wait_idle(page)
        page.get_by_role("button", name="Apply preset").click()
        page.get_by_text("strategy partial").first.wait_for(timeout=60_000)
        browser.wait_idle(page)
        assert browser.exceptions(page) == []
        _shot(page, "freeze")

        start_training(page, 2)
        # the caching pass, with its progress: on an idle machine with a warm worker the whole run can take ~2 s,
        # between two of the page's 1 s polls, so its end is an answer too (AppTest checks Start's state)
        page.get_by_text(re.compile(r"caching features:|best val acc \d")).first.wait_for(timeout=120_000)
        if page.get_by_text("caching features:").count():
            assert page.get_by_role("button", name="Start training").is_disabled()  # one job per lab
            _shot(page, "train_caching")
        page.get_by_text(re.compile(r"best val acc \d")).wait_for(timeout=240_000)  # not the runs table's header
        browser.wait_idle(page)
        assert browser.exceptions(page) == []
        assert page.get_by_text("Confusion matrix").count() or page.locator(".js-plotly-plot").count() >= 3
        _shot(page, "train")

        _go(page, "CAM & Grad-CAM")
        page.get_by_role("button", name="Compute").click()
        _done(page, "the crop the model saw", "cam", timeout=120_000)

        _go(page, "Feature maps")
        page.get_by_text("side by side", exact=True).click()
        _done(page, "Relative change", "features", timeout=60_000)

        _go(page, "Export & Netron")
        page.get_by_text("fine-tuned", exact=True).click()  # the model trained above
        browser.wait_idle(page)
        page.get_by_role("button", name="Export and verify").click()
        page.get_by_text("Download the file").wait_for(timeout=120_000)
        browser.wait_idle(page)
        assert browser.exceptions(page) == []
        with page.expect_download(timeout=60_000) as download:
            page.get_by_role("button", name="Download the file").click()
        saved = Path(download.value.path())
        import torch

        reloaded = torch.jit.load(str(saved))  # the downloaded file reloads outside the lab
        assert download.value.suggested_filename.startswith("mobilenet_v2_") and reloaded is not None
        netron = page.frame_locator("iframe").first
        accept = netron.get_by_text("Accept")
        if accept.count():
            accept.first.click()  # Netron's cookie notice
        netron.locator("#canvas, svg").first.wait_for(timeout=60_000)
        page.wait_for_timeout(2000)  # let Netron lay out the graph
        _shot(page, "export")

        _go(page, "SE channel weights")
        page.get_by_role("button", name="Switch to mobilenet_v3_small").click()
        _done(page, "Do the gates depend on the image?", "se", timeout=120_000)

        _go(page, "Attention")
        page.get_by_role("button", name="Switch to vit_tiny_patch16_224").click()
        _done(page, "Attention rows sum to 1", "attention", timeout=120_000)


def test_bad_uploads_show_their_report_in_chromium(app_url, tmp_path):
    """A zip of good and broken images lists every skipped file and why; an unsafe zip is refused."""
    from tests import test_robustness as bad

    entries = {**bad._good_entries(), "a/empty.png": b"", "a/cut.jpg": bad._truncated_jpeg(),
               "a/notes.jpg": b"not a picture", "a/readme.txt": b"hello", "b/anim.gif": bad._frames_gif(),
               "b/cmyk.jpg": bad._cmyk_jpeg(), "__MACOSX/a/._0.png": b"junk"}
    mixed = bad._zip(tmp_path, entries, name="mixed.zip")
    unsafe = bad._zip(tmp_path, {"a/ok.png": bad._png(), "../../evil.png": bad._png()}, name="unsafe.zip")
    with browser.browser_page(height=1600) as page:
        page.goto(app_url)
        page.get_by_text("Strategy advisor").wait_for(timeout=60_000)
        _go(page, "Data")
        page.get_by_text("A .zip of class folders").click()
        page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(mixed))
        page.get_by_role("button", name="Read the zip").click()
        page.get_by_text("4 files skipped (and why)").click()
        _done(page, "empty file (0 bytes)", "data_report", timeout=60_000)
        assert page.get_by_text("8 images, 2 classes").count()
        page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(unsafe))
        page.get_by_role("button", name="Read the zip").click()
        _done(page, "unsafe path '../../evil.png'", "data_unsafe_zip", timeout=60_000)
    assert not (tmp_path.parent / "evil.png").exists()


def test_four_strategies_compared_on_the_textile_sample(app_url):
    with browser.browser_page(height=1800) as page:
        page.goto(app_url)
        page.get_by_text("Strategy advisor").wait_for(timeout=60_000)
        _go(page, "Data")
        slider = page.get_by_role("slider").first  # 60 -> 20 images per class
        slider.focus()
        page.keyboard.press("ArrowLeft")
        page.keyboard.press("ArrowLeft")
        page.get_by_role("button", name="Use the sample").click()
        page.get_by_text("Dataset: textile sample").wait_for(timeout=60_000)
        browser.wait_idle(page)
        _go(page, "Compare")
        epochs = page.get_by_label("Epochs per run")
        epochs.fill("2")
        epochs.press("Enter")
        browser.wait_idle(page)
        size = page.get_by_role("slider").first  # image size 224 -> 128
        size.focus()
        for _ in range(3):
            page.keyboard.press("ArrowLeft")
        browser.wait_idle(page)
        page.get_by_role("button", name="Run comparison").click()
        _done(page, "Download the table (CSV)", "compare", timeout=300_000)
        assert page.get_by_text(re.compile(r"^4 runs of ")).count() == 1  # the page's heading over the results
        for strategy in ("head", "partial", "full", "scratch"):  # each run's own confusion matrix, by name
            assert page.get_by_text(f"{strategy}: confusion", exact=True).count() == 1, strategy
        _go(page, "Concepts")
        _done(page, "print(model)", "concepts", timeout=120_000)


def _same_origin_only(page, origin: str) -> list[str]:
    """Let the page reach only `origin` (scheme, host and port it was opened with) and refuse everything else,
    as for a participant's browser on another machine: its own loopback is not the lab's. Returns the list
    of refused addresses, filled as the page runs."""
    refused = []

    def route(r):
        url = r.request.url
        if url.startswith(origin + "/") or url == origin:
            r.continue_()
        else:
            refused.append(url)
            r.abort()

    page.context.route("**/*", route)
    return refused


def _netron_graph(page, timeout: float = 90.0):
    """Netron's frame once its graph is drawn (its cookie notice accepted on the way): the frame locator."""
    frame = page.frame_locator("iframe").first
    deadline = time.time() + timeout
    while time.time() < deadline:
        accept = frame.get_by_role("button", name="Accept")
        if accept.count() and accept.first.is_visible():
            accept.first.click()  # Netron's notice; offline it always asks
        if frame.locator("#canvas g.node").count():
            return frame
        page.wait_for_timeout(500)
    raise TimeoutError(f"no Netron graph in the iframe; it reads: {frame.locator('body').inner_text()[:300]!r}")


def test_netron_loads_through_the_labs_own_origin_from_two_origins(app_url, vislab_home):
    """The app opened as http://localhost:PORT and as http://127.0.0.1:PORT, each browser allowed to reach only
    the origin it opened: Export shows the exported graph inside the Netron iframe both times. The iframe is a
    path on that origin (no host in it), the viewer serves that lab's file, and not the other lab's through it."""
    port = urllib.parse.urlsplit(app_url).port
    seen = {}
    for host in ("localhost", "127.0.0.1"):
        origin = f"http://{host}:{port}"
        with browser.browser_page(height=1700) as page:
            refused = _same_origin_only(page, origin)
            page.goto(origin)
            page.get_by_text("Strategy advisor").wait_for(timeout=60_000)
            _go(page, "Export & Netron")
            page.get_by_role("button", name="Export and verify").click()
            page.get_by_text("Download the file").wait_for(timeout=180_000)
            browser.wait_idle(page)
            assert browser.exceptions(page) == []
            frame = _netron_graph(page)
            nodes = frame.locator("#canvas g.node").count()
            assert nodes > 20, nodes  # mobilenet_v2's graph: far more than a handful of nodes
            src = page.locator("iframe").first.get_attribute("src")
            assert re.fullmatch(r"/component/pages\._netron\.[0-9a-f]{32}/index\.html\?url=[\w.%-]+", src), src
            assert not [u for u in refused if urllib.parse.urlsplit(u).hostname in ("localhost", "127.0.0.1")], \
                refused  # the viewer never asked another port or the other loopback name
            page.wait_for_timeout(1500)  # let Netron finish laying out before the picture
            page.get_by_role("heading", name="Export & Netron").scroll_into_view_if_needed()
            if host == "localhost":
                page.screenshot(path="/tmp/netron_check.png", full_page=True)
            _shot(page, f"export_netron_{host}")
            lab = urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)["lab"][0]
        name = urllib.parse.unquote(src.split("?url=", 1)[1])
        exported = vislab_home / "labs" / lab / "data" / "export" / name
        with urllib.request.urlopen(origin + src.split("?", 1)[0].rsplit("/", 1)[0] + "/" + name, timeout=10) as r:
            assert r.status == 200 and r.read() == exported.read_bytes()
        seen[host] = (src, name, lab)
    (src_a, name_a, lab_a), (src_b, name_b, lab_b) = seen.values()
    assert lab_a != lab_b and src_a != src_b
    folder_a = src_a.split("?", 1)[0].rsplit("/", 1)[0]
    for other in (f"../{src_b.split('/')[2]}/{name_b}", "state.json", f"../../labs/{lab_a}/state.json"):
        with pytest.raises(urllib.error.HTTPError) as err:  # through lab A's viewer: lab B's file, A's own state
            urllib.request.urlopen(f"{app_url}{folder_a}/{other}", timeout=10)
        assert err.value.code in (400, 404), other
