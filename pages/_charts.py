"""Plotly charts as every page draws them: full width, and a toolbar that downloads a PNG for slides; in the
lab's projector mode, with large type, thick lines and Cividis colour maps (vislab.figures.charts.projector)."""

from __future__ import annotations

import streamlit as st

from pages._state import PROJECTOR
from vislab.figures import charts

PLOTLY_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


def chart(fig, key: str | None = None, **select) -> None:
    """A plotly chart; its toolbar's camera button downloads it as PNG (for slides), as projected when the
    lab is in projector mode. `select`: st.plotly_chart's selection arguments (on_select, selection_mode)."""
    if st.session_state.get(PROJECTOR):
        fig = charts.projector(fig)
    st.plotly_chart(fig, width="stretch", config=PLOTLY_CONFIG, key=key, **select)


if __name__ == "__main__":  # opened as a page of its own (Streamlit's old pages-folder mode)
    from pages import _route

    _route.through_app()
