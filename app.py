"""vislab's entry point: it only routes (finds this link's lab, fills the sidebar, saves the lab after the page;
a share link goes to its one read-only page, before and without any lab). Run with `streamlit run app.py`."""

import streamlit as st

from pages import _jobs, _lab, _route, _shared, _sidebar, _startup, _state

st.set_page_config(page_title="vislab", page_icon=":material/biotech:", layout="wide")
if _shared.wanted():  # ?share=<token>: one run, read-only; no lab is opened or created, no other page offered
    _shared.navigation().run()
    st.stop()
pages = _route.navigation()
_startup.clean_work_dirs()
_state.init_state()
_lab.open_lab()  # the lab of this link (or a new one); a bad link stops here with a message
_jobs.queue()  # the server's one queue, made on the first visit: its spare worker is warm before anyone trains
raw = _lab.raw_state()  # what persist() reads, even after a page's st.stop()
slot = st.sidebar.empty()
_sidebar.summary(slot.container())  # drawn first: a page that calls st.stop() ends the run, and with it anything
                                    # drawn after
_sidebar.run_line()
_sidebar.lab_controls()
try:
    _state.keep_settings()  # what a person set on another page stays set
    with _route.routed():
        pages.run()  # Streamlit keeps an unexpected error inside this page (see client.showErrorDetails)
finally:  # after the page: keep what it changed in the lab, and redraw the sidebar with it
    _lab.persist(raw)
    _sidebar.summary(slot.container())
