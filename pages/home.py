import streamlit as st

from pages import _charts, _route, _state
from vislab.teaching import advisor  # light: the heavy imports (torch, timm) wait until the catalog below
from vislab.figures import charts as plots

_route.through_app()  # first: a page opened on its own (the first request after a restart) goes through app.py

# ---- this page's keys (kept: a person's settings, see _state.kept) ------------------------------------------
ADV_SIZE = "adv_size"
ADV_SIM = "adv_sim"
ADV_SIZE_PICKED = "adv_size_picked"  # True once a person picked a size (until then it follows the dataset's)
MATRIX = "matrix"


@st.cache_resource(show_spinner=False, max_entries=8)
def _matrix(size: str, similarity: str):
    """The advisor's chart, built once per pair of answers and shared (read-only): building a plotly figure
    costs tens of ms of the server's one interpreter, and Home reruns on every visit of every user."""
    return plots.strategy_matrix(size, similarity, advisor.MATRIX)


def _size_picked() -> None:
    st.session_state[_state.kept(ADV_SIZE_PICKED)] = True


def _dataset_images() -> int | None:
    """How many images the lab's dataset uses (the Data page's choice), when this session has one."""
    used = getattr(st.session_state.get(_state.DATASET), "used", None)
    return len(used.items) if used is not None else None


_state.init_state()
st.title("vislab — the transfer-learning lab")
st.markdown(
    "Take a network trained on ImageNet, keep what it learned where that helps, and retrain the rest on "
    "your own images. **Model** picks the network, **Data** your images, **Freeze & BatchNorm** decides "
    "what may change, **Train** runs it and shows the results."
)

st.subheader("Strategy advisor")
left, right = st.columns([1, 2])
with left:
    images = _dataset_images()
    fits = advisor.size_bucket(images) if images is not None else None
    if fits is not None and not st.session_state.get(ADV_SIZE_PICKED):  # until the person picks: their data's size
        st.session_state[ADV_SIZE] = fits
    size = st.radio("How many labelled images do you have?", advisor.SIZES, horizontal=True,
                    format_func=advisor.SIZE_LABELS.get, key=_state.kept(ADV_SIZE), on_change=_size_picked)
    if images is not None:
        st.caption(f"Your dataset: {images:,} images → {fits}" + (f" (you picked {size})" if size != fits else ""))
    similarity = st.radio("How much do they look like ImageNet photos?", advisor.SIMILARITIES, horizontal=True,
                          format_func=lambda s: {"similar": "similar (natural photos)",
                                                 "different": "different (medical, textiles, …)"}[s],
                          key=_state.kept(ADV_SIM))
    advice = advisor.advise(size, similarity)
    st.markdown(f"**{advice.title}.** {advice.why}")
    if advisor.chart_note(size):  # tiny and medium: how the 2x2 chart on the right shows them
        st.caption(advisor.chart_note(size))
    if st.button(f"Apply the `{advice.strategy}` preset", type="primary"):
        from pages import _working

        _working.apply_preset(advice.strategy)
        st.success(f"Preset `{advice.strategy}` applied: see Freeze & BatchNorm.")
with right:
    _charts.chart(_matrix(advisor.chart_row(size), similarity), key=MATRIX)

st.subheader("Model catalog")
with st.spinner("Reading which weights are on this machine…"):
    from pages import _working

    rows = _working.catalog_rows()
ready = [r["model"] for r in rows if not r["weights"].startswith("none")]
if ready:
    st.caption(f"Real pretrained weights on this machine: {', '.join(ready)}. The others start from random "
               "init unless you import weights on the Model page.")
else:
    from vislab.models import catalog, weights

    st.warning("No pretrained weights found for this server: models start from random init. "
               + weights.missing_advice(catalog.DEFAULT_MODEL))
st.dataframe(rows, hide_index=True, width="stretch")
