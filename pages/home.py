import streamlit as st

from pages import _charts, _route, _state
from vislab.teaching import advisor  # light: the heavy imports (torch, timm) wait until the catalog below
from vislab.figures import charts as plots
from vislab.serving import joining

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


@st.cache_data(show_spinner=False, ttl=300, max_entries=4)
def _join_urls(host: str | None, port: int, base_path: str) -> list[str]:
    """Where participants join, looked up at most every 5 minutes: a host-name lookup can wait on a slow
    resolver, and a laptop that changes networks gets its new address without a restart."""
    return joining.join_urls(host, port, base_path)


@st.cache_data(show_spinner=False, max_entries=4)
def _qr(url: str) -> bytes:
    return joining.qr_png(url)


def _join_screen(host: str | None, urls: list[str]) -> None:
    """The address to join, as a QR code and in large type, for the instructor to project."""
    st.subheader("Join this lab")
    if not urls:  # listening on every interface, yet none that another machine could reach
        st.warning(f"The lab listens on `{host}`, but this machine has no address that another machine could "
                   "reach (no network?): there is no address to show.")
        return
    code, text = st.columns([1, 2], vertical_alignment="center")
    # its own size (330-370 px) and PNG: Streamlit would send it as a JPEG, blurring the modules' edges
    code.image(_qr(urls[0]), caption="Scan to join", output_format="PNG")
    with text:
        st.header(urls[0], anchor=False)
        st.markdown("Open this address, or scan the code: **each participant gets their own private lab** from "
                    "that link (a new one, with its own private address to bookmark); nobody sees anyone "
                    "else's.")
        if len(urls) > 1:
            st.caption("Also: " + " · ".join(f"`{u}`" for u in urls[1:]))


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
host = st.get_option("server.address")
if not joining.is_loopback(host):  # served to a room: the address to join comes first, for the projector
    _join_screen(host, _join_urls(host, st.get_option("server.port"), st.get_option("server.baseUrlPath")))

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
if joining.is_loopback(host):
    st.caption("Serving a class? Start the lab with `bash scripts/start.sh --server.address 0.0.0.0` and this "
               "page shows the address to join, as a QR code to project.")
