import numpy as np
import plotly.graph_objects as go
import streamlit as st

from pages import _charts, _dataset, _route, _state
from vislab.models import catalog
from vislab.teaching import concepts
from vislab.figures import charts as plots

_route.through_app()  # first: a page opened on its own (the first request after a restart) goes through app.py

# ---- this page's keys (kept: a person's settings, see _state.kept) ------------------------------------------
CONCEPT_GAP_MODEL = "concept_gap_model"
CONCEPT_C = "concept_c"
CONCEPT_RF = "concept_rf"
CONCEPT_DEPTH = "concept_depth"
CONCEPT_RES = "concept_res"
CONCEPT_SCORES = "concept_scores"
CONCEPT_ATTN = "concept_attn"

_dataset.open_page()
ss = st.session_state
st.title("Concepts, live")
st.markdown("The course's key ideas as small computations on real PyTorch modules: every number below is "
            "computed now, not typed in.")


# Every demo is computed once per input (st.cache_data: a copy for each run) and each chart built once per input
# (st.cache_resource: one figure shared read-only, as Home's advisor chart): a visit reruns no module and builds
# no figure it already has (issue 22).


@st.cache_data(show_spinner="Running the model at several input sizes…")
def gap_demo(name: str) -> concepts.GapFlattenDemo:
    return concepts.gap_vs_flatten(name)


@st.cache_data(show_spinner=False, max_entries=16)
def conv_demo(channels: int) -> concepts.ConvStackDemo:
    return concepts.stacked_3x3_vs_7x7(channels)


@st.cache_resource(show_spinner=False, max_entries=16)
def conv_figure(channels: int):
    conv = conv_demo(channels)
    return plots.map_grid(np.stack([conv.stacked_grad, conv.single_grad]),
                          ["3 × 3×3: |∂ out / ∂ in|", "1 × 7×7: |∂ out / ∂ in|"], cols=2,
                          title="Which input pixels reach one output pixel", smooth=False)


@st.cache_data(show_spinner=False, max_entries=64)
def residual_demo(depth: int) -> concepts.GradientDemo:
    return concepts.residual_gradient_norms(depth)


@st.cache_resource(show_spinner=False, max_entries=64)
def residual_figure(depth: int):
    grads = residual_demo(depth)
    fig = go.Figure()
    fig.add_scatter(x=list(range(1, depth + 1)), y=grads.plain, mode="lines+markers", name="plain stack",
                    line=dict(color=plots.THAWED, width=3))
    fig.add_scatter(x=list(range(1, depth + 1)), y=grads.residual, mode="lines+markers", name="with skip connections",
                    line=dict(color=plots.HEAD, width=3))
    fig.update_yaxes(type="log", title="‖∂ loss / ∂ W‖")
    fig.update_xaxes(title="layer (1 = next to the input)")
    return plots._layout(fig, "Gradient norm per layer at initialisation")


@st.cache_data(show_spinner=False)
def se_demo() -> dict:
    return concepts.se_toy()


@st.cache_data(show_spinner=False)
def attention_demo() -> dict:
    return concepts.attention_toy()


@st.cache_resource(show_spinner=False)
def attention_figures() -> tuple:
    att = attention_demo()
    return (plots.heatmap(att["scores"], "key token", [f"query {i}" for i in range(len(att["scores"]))],
                          "QKᵀ / √d", zmin=None, zmax=None),
            plots.heatmap(att["attn"], "key token", [f"query {i}" for i in range(len(att["attn"]))],
                          "softmax rows (each sums to 1)"))


@st.cache_data(show_spinner=False)
def order_demo() -> dict:
    return concepts.print_vs_execution_order(concepts.ReorderedToy())


st.header("1 · Global Average Pooling vs flattening")
names = [n for n in catalog.names() if catalog.lookup(n).gap_linear_head] + ["vgg16_bn"]
ss.setdefault(CONCEPT_GAP_MODEL, "resnet18")  # a default here, not in the widget: the kept setting wins
name = st.selectbox("Model", names, key=_state.kept(CONCEPT_GAP_MODEL))
try:
    demo = gap_demo(name)
except ValueError as exc:
    st.error(str(exc))
else:
    c, h, w = demo.feature_shape
    st.markdown(f"At {demo.reference_size} px `{name}` ends in a **{c} × {h} × {w}** feature map. A flattening head "
                f"to {demo.num_classes} classes needs **{demo.flatten_params:,}** parameters; global average pooling "
                f"first needs **{demo.gap_params:,}** ({demo.flatten_params / demo.gap_params:.0f}× fewer).")
    st.table([{"input": f"{r['size']} px", "feature map": " × ".join(map(str, r["feature_shape"])),
               "GAP head": f"works → {tuple(r['gap_output_shape'])}",
               "flatten head": "works" if r["flatten_ok"] else f"fails: {r['flatten_error']}"} for r in demo.runs])

st.header("2 · Three 3×3 convolutions vs one 7×7")
ss.setdefault(CONCEPT_C, 64)
ch = st.select_slider("Channels C", [16, 32, 64, 128, 256], key=_state.kept(CONCEPT_C))
conv = conv_demo(ch)
st.markdown(f"Both see a **{conv.stacked_rf_steps[-1]}×{conv.stacked_rf_steps[-1]}** window (recursion "
            f"{' → '.join(map(str, conv.stacked_rf_steps))} vs {conv.single_rf_steps[-1]}; the gradient of one "
            f"output pixel confirms {conv.stacked_window}×{conv.stacked_window} and "
            f"{conv.single_window}×{conv.single_window}). Parameters: **{conv.stacked_params:,}** (27C²) vs "
            f"**{conv.single_params:,}** (49C²), with {conv.stacked_relus} non-linearities instead of "
            f"{conv.single_relus}.")
_charts.chart(conv_figure(ch), key=CONCEPT_RF)

st.header("3 · Residual connections")
ss.setdefault(CONCEPT_DEPTH, 30)
depth = st.slider("Depth", 5, 60, key=_state.kept(CONCEPT_DEPTH))
grads = residual_demo(depth)
_charts.chart(residual_figure(depth), key=CONCEPT_RES)
st.caption(f"At the first layer the plain stack's gradient is {grads.first_layer_ratio:.1e} × the residual one's: "
           "without skips it vanishes on the way down.")

st.header("4 · Squeeze-and-Excitation, step by step")
se = se_demo()
cols = st.columns(5)
for col, key, label in zip(cols, ("squeeze", "fc1", "relu", "fc2", "gate"),
                           ("squeeze: mean over H×W", "fc1 (bottleneck)", "ReLU", "fc2", "sigmoid gate")):
    col.markdown(f"**{label}**")
    col.code("\n".join(f"{v:+.3f}" for v in se[key]), language=None)
st.caption("Each of the input's channels is then multiplied by its gate: out = x × gate (per channel).")

st.header("5 · Self-attention on a toy sequence")
att = attention_demo()
scores_fig, attn_fig = attention_figures()
c1, c2 = st.columns(2)
with c1:
    _charts.chart(scores_fig, key=CONCEPT_SCORES)
with c2:
    _charts.chart(attn_fig, key=CONCEPT_ATTN)
st.caption("Row sums: " + ", ".join(f"{s:.3f}" for s in att["attn"].sum(1)) + ". The output is this matrix "
           "times V: each token becomes a weighted mix of all the others.")

st.header("6 · `print(model)` order vs execution order")
order = order_demo()
st.markdown("A module may define its layers in one order and call them in another. "
            f"`print(model)` lists **{' → '.join(order['definition'])}**; the forward pass runs "
            f"**{' → '.join(order['execution'])}**. The Export page shows the same table for your model.")
