"""The one place that knows Streamlit: cached resources and session-state keys for the pages."""

from __future__ import annotations

import streamlit as st

from vislab import catalog, models, weights


@st.cache_data(show_spinner=False, ttl=30)
def catalog_rows() -> list[dict]:
    rows = []
    for e in catalog.CATALOG:
        status = weights.status(e.name, e.source)
        rows.append({
            "model": e.name, "family": e.family, "year": e.year, "source": e.source,
            "params (M)": round(e.params / 1e6, 1), "SE blocks": e.has_se, "self-attention": e.has_attention,
            "CAM layer": e.cam_layer,
            "weights": (f"{status.source}" + (f" ({status.note})" if status.note else "")) if status.available
            else "none: random init",
            "idea": e.idea,
        })
    return rows


@st.cache_resource(show_spinner="Loading the pretrained model…", max_entries=4)
def pretrained(name: str):
    """One shared pretrained model per name (never trained in place: pages fine-tune a copy)."""
    return models.create_model(name, num_classes=None, weights_choice="auto")
