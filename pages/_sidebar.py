"""The sidebar: the current lab (model, data, strategy), its job's line, live, and "New lab"."""

from __future__ import annotations

import streamlit as st

from pages import _jobs, _lab, _live
from pages._state import DATASET, HEAD, LAB, MODEL, PENDING_DATASET, STRATEGY

NEW_LAB_BUTTON = "new_lab"


def summary(where) -> None:
    """The current model, dataset and strategy, in the given sidebar container (app.py draws it before the
    page and again after it, with what the page changed)."""
    ss = st.session_state
    ds = ss.get(DATASET)
    pending = ss.get(PENDING_DATASET)
    data_line = (f"{ds.label} · {len(ds.used.items)} images" if ds else
                 f"{pending.get('label', 'saved dataset')}" if pending else "— (pick on Data)")
    where.markdown("### Current lab")
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


def new_lab_button() -> None:
    if st.sidebar.button("New lab", key=NEW_LAB_BUTTON, help="Start an empty lab in this tab. The current one "
                         "stays under its own link (bookmark it to come back)."):
        _lab.new_lab()
        st.rerun()


if __name__ == "__main__":  # opened as a page of its own (Streamlit's old pages-folder mode)
    from pages import _route

    _route.through_app()
