import numpy as np
import streamlit as st

from pages import _cached, _charts, _dataset, _images, _route, _runs, _state, _working
from vislab.training import evaluation
from vislab.figures import charts as plots
from vislab.views import se, base as views
from vislab.data.transforms import crop_seen

_route.through_app()  # first: a page opened on its own (the first request after a restart) goes through app.py

# ---- this page's keys (kept: a person's settings, see _state.kept) ------------------------------------------
SE_HM_PREFIX = "se_hm_"
SE_BLOCK = "se_block"
SE_K = "se_k"
SE_BARS = "se_bars"
SE_MAPS = "se_maps"
SE_CLASS = "se_class"

_dataset.open_page()
ss = st.session_state
st.title("SE channel weights (Squeeze-and-Excitation)")
st.markdown("An SE block averages each channel of a feature map to one number, passes the vector through a "
            "small bottleneck and a gate (sigmoid), and multiplies every channel by its gate in [0, 1]: the "
            "network re-weights its own channels **for each image**. Below: the gates this model puts on them.")

vms = _runs.view_models("se", allow_both=False)
vm = vms[0]
blocks = se.find_se_blocks(vm.model)
if not blocks:
    st.error(str(views.ViewNotApplicable("Squeeze-and-Excitation blocks", vm.model, se.SE_MODELS)))
    if st.button("Switch to mobilenet_v3_small (SE blocks, real weights offline)"):
        _working.set_model("mobilenet_v3_small")
        st.rerun()
    st.stop()

images = _images.pick_images("se", max_n=2, default_n=2)
if not images:
    st.info("Pick one image, or two to compare.")
    st.stop()
cfg = vm.data_config
x = views.batch([img for _, img in images], cfg)  # (B, 3, H, W)
gates = _cached.cached_view("se", vm.model, images, (), lambda: se.se_gates(vm.model, x))

st.caption(f"{len(gates.blocks)} SE blocks in `{vm.label}`; rows are blocks (input side at the top), columns "
           "channels. Grey: the block has fewer channels.")
cols = st.columns(4)
for (label, img), col in zip(images, cols):  # the photos side by side, each heatmap below at full width: 576
    col.image(crop_seen(img, cfg), caption=label, width=160)  # channels in half a page were 0.7 px each
for i, (label, _) in enumerate(images):
    _charts.chart(plots.heatmap(gates.matrix(i), "channel", gates.blocks, f"Gates · {label}"),
                 key=f"{SE_HM_PREFIX}{i}")

if len(images) == 2:
    per_block = gates.mean_difference(0, 1)
    st.markdown("**Do the gates depend on the image?** Mean |gate(image 1) − gate(image 2)| per block: " +
                ", ".join(f"`{b}` {d:.3f}" for b, d in zip(gates.blocks, per_block)))
    constant = [b for b, d in zip(gates.blocks, per_block) if d < 1e-6]
    if constant:
        st.caption(f"Identical for both images: {', '.join(constant)} — such a block's bottleneck outputs zero "
                   "for every image, so its gate is a constant set by the bias alone.")

st.subheader("One block")
b_name = st.selectbox("Block", gates.blocks, index=len(gates.blocks) - 1, key=_state.kept(SE_BLOCK))
b = gates.blocks.index(b_name)
k = st.slider("Channels to show", 2, 16, 6, key=_state.kept(SE_K))
gate = gates.gates[b][0]
boosted, suppressed = se.top_channels(gate, k)
_charts.chart(plots.bars(gate, f"{b_name}: gate per channel · {images[0][0]} (green: most boosted, orange: most "
                      "suppressed)", boosted, suppressed), key=SE_BARS)
block_in, _, block_out = _cached.cached_view("se_block", vm.model, images[:1], (b_name,),
                                             lambda: se.block_input_output(vm.model, b_name, x[:1]))
maps = block_in[0].numpy()  # (C, h, w): the maps the gate scales
titles = [f"ch {c} · g={gate[c]:.2f}" for c in boosted] + [f"ch {c} · g={gate[c]:.2f}" for c in suppressed]
_charts.chart(plots.map_grid(np.stack([maps[c] for c in boosted + suppressed]), titles, cols=k,
                            title="Feature maps entering the block: boosted (top), suppressed (bottom)"),
             key=SE_MAPS)

tuned = _runs.trained_view()
ds = ss.get(_state.DATASET)
if tuned is not None and ds is not None and se.find_se_blocks(tuned.model):
    st.subheader("Mean gate per class (validation set, fine-tuned model)")
    if st.button("Compute class means"):
        _, val = ds.split()
        means = se.class_mean_gates(tuned.model, evaluation.eval_loader(val, tuned.data_config), len(tuned.classes))
        last = len(means.blocks) - 1
        _charts.chart(plots.heatmap(np.stack([means.gates[last][c] for c in range(len(tuned.classes))]), "channel",
                                 tuned.classes, f"{means.blocks[last]}: mean gate per class"), key=SE_CLASS)
