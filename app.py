"""vislab's entry point: it only routes. Run with `streamlit run app.py`."""

import streamlit as st

st.set_page_config(page_title="vislab", page_icon="🔬", layout="wide")
st.navigation([
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
]).run()
