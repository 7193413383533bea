"""The sidebar: the current lab (its name, model, data, strategy), its job's line, live, the lab's own controls
(your name, projector mode) and "New lab"."""

from __future__ import annotations

import streamlit as st

from pages import _jobs, _lab, _live
from pages._state import DATASET, HEAD, LAB, MODEL, NAME, PENDING_DATASET, PROJECTOR, STRATEGY
from vislab.serving import labs

NEW_LAB_BUTTON = "new_lab"
NAME_BOX = "lab_name_box"  # the "Your name" box; the lab keeps the cleaned name under _state.NAME
PROJECTOR_TOGGLE = "projector_toggle"  # the lab keeps its value under _state.PROJECTOR
_NAME_NOTE = "_lab_name_note"  # what cleaning the name last changed, said under the box
# Projector mode's page text: Streamlit sizes its type in rem, so a larger root font makes every text, label
# and caption larger at once (the charts are done by vislab.figures.charts.projector).
PROJECTOR_CSS = "<style>html { font-size: 125% !important; }</style>"


def summary(where) -> None:
    """The current model, dataset and strategy, in the given sidebar container (app.py draws it before the
    page and again after it, with what the page changed)."""
    ss = st.session_state
    ds = ss.get(DATASET)
    pending = ss.get(PENDING_DATASET)
    data_line = (f"{ds.markdown} · {len(ds.used.items)} images" if ds else
                 f"{pending.get('label', 'saved dataset')}" if pending else "— (pick on Data)")
    name = labs.clean_name(ss.get(NAME))  # cleaned again: state.json may have been edited by hand
    where.markdown(f"### Lab of {labs.name_markdown(name)}" if name else "### Current lab")
    where.markdown(
        f"**Model** `{ss[MODEL]}` ({ss[HEAD]} head)  \n"
        f"**Data** {data_line}  \n"
        f"**Strategy** {ss[STRATEGY]}"
    )
    if ss.get(LAB):
        where.caption(f"Lab `{ss[LAB][:8]}…` — bookmark this page's address to come back to it (it holds your "
                      "data, settings and runs, also after a server restart).")


def _run_line(job) -> None:
    st.markdown(f"**Run** {_jobs.sidebar_line()}")


def run_line() -> None:
    """The lab's job, live: this line alone reruns while a job is queued or running (at half a page's rate)."""
    with st.sidebar:
        _live.follow_job(None, _run_line, slower=2)


def _name_changed() -> None:
    """The box was edited: the lab keeps the cleaned name, the box shows it, and the note says what changed."""
    ss = st.session_state
    typed = ss.get(NAME_BOX) or ""
    name = labs.clean_name(typed)
    whole = labs.clean_name(typed, limit=None)
    ss[NAME], ss[NAME_BOX] = name, name
    ss[_NAME_NOTE] = (f"Cut to {labs.NAME_LIMIT} characters." if len(whole) > len(name) else
                      "Kept as plain text on one line: extra spaces, line breaks and control characters removed."
                      if whole != typed.strip() else "")


def name_box() -> None:
    """The "Your name" box: the lab's display name (what the instructor's Class page lists), plain text."""
    ss = st.session_state
    name = labs.clean_name(ss.get(NAME))
    if ss.get(NAME_BOX) != name:  # the lab's, also when a reload or another tab changed it (set only then: a
        ss[NAME_BOX] = name  # value set from here replaces what the person is still typing in the browser)
    st.sidebar.text_input("Your name", key=NAME_BOX, on_change=_name_changed, placeholder="shown to your instructor",
                          help=f"A display name for this lab: plain text, at most {labs.NAME_LIMIT} characters.")
    if ss.get(_NAME_NOTE):
        st.sidebar.caption(ss[_NAME_NOTE])


def _projector_changed() -> None:
    st.session_state[PROJECTOR] = bool(st.session_state.get(PROJECTOR_TOGGLE))


def projector_toggle() -> None:
    """Projector mode, kept in the lab: large type on every page, and every chart through charts.projector."""
    ss = st.session_state
    if ss.get(PROJECTOR_TOGGLE) != bool(ss.get(PROJECTOR)):
        ss[PROJECTOR_TOGGLE] = bool(ss.get(PROJECTOR))
    st.sidebar.toggle("Projector mode", key=PROJECTOR_TOGGLE, on_change=_projector_changed,
                      help="For a room: large type, thick lines and markers, and colour maps (Cividis) that stay "
                           "readable on a washed-out projector and for colour-blind viewers.")
    if ss[PROJECTOR_TOGGLE]:
        st.sidebar.markdown(PROJECTOR_CSS, unsafe_allow_html=True)


def lab_controls() -> None:
    """The lab's own controls under its summary (your name, projector mode), then "New lab"."""
    name_box()
    projector_toggle()
    if st.sidebar.button("New lab", key=NEW_LAB_BUTTON, help="Start an empty lab in this tab. The current one "
                         "stays under its own link (bookmark it to come back)."):
        _lab.new_lab()
        st.rerun()


if __name__ == "__main__":  # opened as a page of its own (Streamlit's old pages-folder mode)
    from pages import _route

    _route.through_app()
