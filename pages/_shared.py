"""Shared runs in the app: the owner's "Share this run" box under a finished run, and the read-only page a
link `?share=<token>` opens (vislab.serving.shares keeps the tokens).

A share link is a page of its own: app.py hands it here before anything of a lab happens, so no lab is
opened or created for it, the lab's id never reaches the page or its address (a `?lab=` beside the token is
dropped, unread), and the navigation has this one page, hidden: no sidebar, no lab controls, no other page
to switch to. What it shows is `pages/_runview.show` of the one run: results, never paths, ids or buttons.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import streamlit as st

from pages import _route, _runview, _state
from vislab.serving import shares

SHARE_PARAM = "share"  # the query parameter of a share link
RUNVIEW_KEY = "shared"  # the key of the one _runview on the shared page
SHARE_PREFIX = "share_run_"  # + where the box is (job / reopened): "Share this run"
REVOKE_PREFIX = "share_revoke_"  # + where: "Revoke link"
SHARED_URL_PATH = "shared"
_PAGE_PATHS = {Path(path).stem for path, _, _ in _route.PAGES} | {SHARED_URL_PATH}


def wanted() -> bool:
    """This request holds a share link (app.py then routes it here alone)."""
    return SHARE_PARAM in st.query_params


def navigation():
    """The navigation of a share link: its one page, hidden (nothing to switch to, nothing in the sidebar)."""
    return st.navigation([st.Page(view, title="Shared run", icon=":material/share:", url_path=SHARED_URL_PATH,
                                  default=True)], position="hidden")


def app_root() -> str:
    """The app's address as the browser sees it (scheme, host, port, base path; no page, no query), or "/"
    when the browser has not said it."""
    parts = urlsplit(st.context.url or "")
    if not parts.scheme or not parts.netloc:
        return "/"
    head, _, last = parts.path.rstrip("/").rpartition("/")
    path = head if last in _PAGE_PATHS else parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, f"{path}/", "", ""))


def link(token: str) -> str:
    return f"{app_root()}?{SHARE_PARAM}={token}"


def view() -> None:
    """The page of a share link: the run's read-only view, or why the link opens nothing."""
    token = st.query_params.get(SHARE_PARAM, "")
    if _state.LAB in st.session_state:  # this session had a lab: share wins, and nothing of it stays here
        st.session_state.clear()
    if list(st.query_params) != [SHARE_PARAM]:  # a ?lab= (anyone's) beside the token is dropped, never opened
        st.query_params.from_dict({SHARE_PARAM: token})
    try:
        _, folder = shares.resolve(token)
    except shares.ShareError as exc:
        st.title("Shared run")
        st.error(str(exc))
        st.link_button("Start your own lab", app_root(), type="primary")
        return
    st.title("Shared run")
    st.caption("A training run shared read-only by the person who trained it: its results, and nothing else of "
               "their lab.")
    _runview.show(folder, RUNVIEW_KEY)
    st.divider()
    st.link_button("Start your own lab", app_root())


# ---- the owner's side: under a finished run on the Train page ----------------------------------------------
def _share(run_name: str) -> None:
    try:
        shares.create(_state.current_lab(), run_name)
    except shares.ShareError:  # the run lost its weights since the page was drawn: the page, drawn again,
        pass  # says it cannot open the run, and offers no box


def _revoke(run_name: str) -> None:
    shares.revoke(_state.current_lab(), run_name)


def share_box(run_name: str, where: str) -> None:
    """"Share this run" under a finished run of this lab; once shared, its link (copyable) and "Revoke link".
    `where` tells two boxes on one page apart (the last job, a reopened run)."""
    lab = _state.current_lab()
    if not shares.shareable(lab, run_name):
        return
    token = shares.token_of(lab, run_name)
    if token is None:
        st.button("Share this run", key=f"{SHARE_PREFIX}{where}", icon=":material/share:", on_click=_share,
                  args=(run_name,), help="A read-only link to this run's results (curves, confusion matrix, "
                  "per-class accuracy, top losses, Grad-CAM) for anyone you give it to: nothing else of your lab.")
        return
    st.markdown(f"**Shared:** `{run_name}`. Anyone with this link sees this run's results, read-only, and "
                "nothing else of your lab (not its other runs, data, settings or its own link):")
    st.code(link(token), language=None, wrap_lines=True)
    st.button("Revoke link", key=f"{REVOKE_PREFIX}{where}", icon=":material/link_off:", on_click=_revoke,
              args=(run_name,), help="The link stops working at once, for everyone who has it. Sharing again "
                                     "makes a new link.")


if __name__ == "__main__":  # opened as a page of its own (Streamlit's old pages-folder mode)
    _route.through_app()
