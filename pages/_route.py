"""The app's pages, and the guard that sends a page file run on its own back through app.py.

Streamlit decides once per server process whether a `pages/` folder beside the entry point means its old
multipage mode (every `pages/*.py` a page of its own, helpers included): until some script run has called
`st.navigation`, it runs the page of the address alone. After a restart, the first request is often not `/`
(a bookmark, every open tab reconnecting), so that page would run without app.py: no lab, no sidebar, the
helper modules listed as pages. Each page calls `through_app()` first: run by app.py it does nothing; run
alone it runs app.py in its place, in the same script run (so a click that came with this request is not
lost), and app.py's `st.navigation` ends that old mode for the process and draws the page of the address.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import streamlit as st

# (file, title, icon): the order of the sidebar; the first is the default page
PAGES = (
    ("pages/home.py", "Home", ":material/home:"),
    ("pages/model.py", "Model", ":material/neurology:"),
    ("pages/data.py", "Data", ":material/photo_library:"),
    ("pages/freeze.py", "Freeze & BatchNorm", ":material/ac_unit:"),
    ("pages/train.py", "Train", ":material/monitoring:"),
    ("pages/compare.py", "Compare", ":material/compare:"),
    ("pages/study.py", "Transfer study", ":material/query_stats:"),
    ("pages/cam.py", "CAM & Grad-CAM", ":material/visibility:"),
    ("pages/se.py", "SE channel weights", ":material/tune:"),
    ("pages/attention.py", "Attention", ":material/center_focus_strong:"),
    ("pages/features.py", "Feature maps", ":material/grid_view:"),
    ("pages/layers.py", "Layer responses", ":material/layers:"),
    ("pages/export.py", "Export & Netron", ":material/account_tree:"),
    ("pages/concepts.py", "Concepts", ":material/school:"),
    ("pages/class.py", "Class", ":material/groups:"),
)

APP = Path(__file__).resolve().parents[1] / "app.py"
_run = threading.local()  # a script run executes in one thread: app.py marks the page it runs


def navigation():
    """The app's `st.navigation`, every page listed (no "View more" fold on a projector)."""
    return st.navigation([st.Page(path, title=title, icon=icon, default=i == 0)
                          for i, (path, title, icon) in enumerate(PAGES)], expanded=True)


@contextlib.contextmanager
def routed():
    """app.py runs the page inside this: the page's `through_app()` then knows it was routed."""
    _run.routed = True
    try:
        yield
    finally:
        _run.routed = False


def through_app() -> None:
    """First call of every file in pages/: nothing when app.py runs it; run alone, draw it again through app.py."""
    if getattr(_run, "routed", False):
        return
    exec(_app_code(), {"__name__": "__main__", "__file__": str(APP)})  # noqa: S102 - our own entry point
    st.stop()  # the page ran inside app.py; nothing of this lone run is left to do


def _app_code():
    stamp = APP.stat().st_mtime_ns
    cached = getattr(_app_code, "cached", None)
    if cached is None or cached[0] != stamp:
        cached = _app_code.cached = (stamp, compile(APP.read_text(), str(APP), "exec"))
    return cached[1]
