"""One Netron viewer per browser session, served by the lab's own Streamlit server (no second port).

Each export gets a private folder (vislab.export.netron: netron's web files and that one exported file) that is
registered as a Streamlit component, so Streamlit serves it from its own origin at
`<base>/component/pages._netron.<token>/`. The iframe's address is a path on the page's own origin, never a
host name: a browser on another machine that can open the lab can open the viewer. The token (128 bits from
`secrets`) is new for each export; the viewer of an earlier export, of a closed session, or of another lab in
the same tab is deleted or never shown, and its address answers 404.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from pages import _state
from vislab.export import netron as netron_web


@dataclass(eq=False)
class Shown:
    viewer: netron_web.Viewer
    lab: str  # the lab the exported file belongs to
    component: object  # the registered streamlit CustomComponent (its .name is in the address)

    @property
    def url(self) -> str:
        """The viewer page as a path on the lab's own origin (Streamlit's `server.baseUrlPath` included)."""
        return component_path(self.component.name, self.viewer.page)


def component_path(name: str, page: str) -> str:
    """`/<baseUrlPath>/component/<name>/<page>`: where Streamlit serves a registered component's folder."""
    base = (st.get_option("server.baseUrlPath") or "").strip("/")
    return "/" + "/".join(part for part in (base, "component", name, page) if part)


@st.cache_resource
def _staging() -> netron_web.Staging:
    """Netron's web files, copied once per process into a private temp folder (removed at exit)."""
    import atexit

    staging = netron_web.Staging()
    atexit.register(staging.close)
    return staging


@st.cache_resource
def _netron_servers() -> dict:
    """session id -> Shown, shared by the process so viewers of closed sessions can be removed."""
    return {}


def _prune_netron() -> None:
    """Delete the viewers of browser sessions that have ended."""
    from streamlit import runtime

    viewers = _netron_servers()
    if not runtime.exists():
        return
    rt = runtime.get_instance()
    for sid in list(viewers):
        if not rt.is_active_session(sid):
            viewers.pop(sid).viewer.close()


def session_key() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx else st.session_state[_state.LAB]


def netron_for(file: Path) -> Shown:
    """Replace this session's viewer with one on `file` (an exported file of this session's lab)."""
    import streamlit.components.v1 as components

    lab = _state.current_lab()
    if not lab.inside(file):
        raise ValueError(f"{file}: not a file of this lab")
    _prune_netron()
    viewers = _netron_servers()
    old = viewers.pop(session_key(), None)
    if old is not None:
        old.viewer.close()
    viewer = _staging().viewer(file)
    try:
        component = components.declare_component(viewer.token, path=str(viewer.folder))
    except BaseException:
        viewer.close()
        raise
    shown = Shown(viewer, lab.id, component)
    viewers[session_key()] = shown
    return shown


def current_netron() -> Shown | None:
    """This session's viewer, if it shows a file of the lab the session has open now."""
    viewers = _netron_servers()
    shown = viewers.get(session_key())
    if shown is not None and shown.lab != st.session_state.get(_state.LAB):  # "New lab" in this tab
        viewers.pop(session_key()).viewer.close()
        return None
    return shown if shown is not None and shown.viewer.open else None


if __name__ == "__main__":  # opened as a page of its own (Streamlit's old pages-folder mode)
    from pages import _route

    _route.through_app()
