"""vislab's entry point: it only routes (finds this link's lab, fills the sidebar, saves the lab after the page).
Run with `streamlit run app.py`."""

import streamlit as st

from pages import _jobs, _route, _state

st.set_page_config(page_title="vislab", page_icon=":material/biotech:", layout="wide")
pages = _route.navigation()
_state.clean_work_dirs()
_state.init_state()
_state.open_lab()  # the lab of this link (or a new one); a bad link stops here with a message
_jobs.queue()  # the server's one queue, made on the first visit: its spare worker is warm before anyone trains
raw = _state.raw_state()  # what persist() reads, even after a page's st.stop()
slot = st.sidebar.empty()
_state.sidebar(slot.container())  # drawn first: a page that calls st.stop() ends the run, and with it anything
                                  # drawn after


lab_job = _jobs.active_job()
lab_job_queued = lab_job is not None and lab_job.state == "queued"


@st.fragment(run_every=None if lab_job is None else 2 * (_jobs.POLL_QUEUED_S if lab_job_queued else _jobs.POLL_RUNNING_S))
def run_line():
    """The lab's job, live: this fragment alone reruns while a job is queued or running (slower while queued)."""
    if lab_job_queued and lab_job.state != "queued":
        st.rerun(scope="app")  # it started: poll at the running rate from now on
    st.markdown(f"**Run** {_jobs.sidebar_line()}")


with st.sidebar:
    run_line()
if st.sidebar.button("New lab", key=_state.NEW_LAB_BUTTON, help="Start an empty lab in this tab. The current one stays under "
                     "its own link (bookmark it to come back)."):
    _state.new_lab()
    st.rerun()
try:
    _state.keep_settings()  # what a person set on another page stays set
    with _route.routed():
        pages.run()  # Streamlit keeps an unexpected error inside this page (see client.showErrorDetails)
finally:  # after the page: keep what it changed in the lab, and redraw the sidebar with it
    _state.persist(raw)
    _state.sidebar(slot.container())

