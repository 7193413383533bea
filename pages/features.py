from functools import partial

import streamlit as st

from pages import _cached, _charts, _dataset, _images, _route, _runs, _state
from vislab.views import cam, features, base as views
from vislab.figures import charts as plots
from vislab.data.transforms import crop_seen, eval_transform

_route.through_app()  # first: a page opened on its own (the first request after a restart) goes through app.py

# ---- this page's keys (kept: a person's settings, see _state.kept) ------------------------------------------
FEAT_ACTS_PREFIX = "feat_acts_"  # + model index: the Features page's activations of each model shown
FEAT_LAYER = "feat_layer"
FEAT_N = "feat_n"
FEAT_PREFIX = "feat_"

_dataset.open_page()
ss = st.session_state
st.title("Feature maps and filters")
st.markdown("The first layer's filters are small RGB pictures: edges, colour blobs, stripes. Deeper layers "
            "answer to larger and more abstract patterns: below, the channels of one layer that respond most "
            "to an image, and how fine-tuning changed them (a frozen layer's maps stay identical).")

vms = _runs.view_models("feat")
vm = vms[0]
try:
    conv_name, conv = features.first_conv(vm.model)
except views.ViewNotApplicable as exc:
    st.error(str(exc))
else:
    grid = features.filter_grid(conv)
    st.subheader(f"First-layer filters: `{conv_name}` ({conv.out_channels} × {conv.kernel_size[0]}×"
                 f"{conv.kernel_size[1]})")
    st.image(grid, width=max(420, min(900, grid.shape[1])))
    from PIL import Image

    _images.download_png(partial(Image.fromarray, grid), "first_layer_filters.png")

images = _images.pick_images("feat", max_n=1)
if not images:
    st.stop()
label, img = images[0]
layers = features.conv_layers(vm.model)
if not layers:
    st.error(str(views.ViewNotApplicable("convolution layers with spatial maps", vm.model, ("resnet18",))))
    st.stop()
c1, c2 = st.columns([3, 1])
layer = c1.selectbox("Layer", layers, index=len(layers) // 2, key=_state.kept(FEAT_LAYER))
n = c2.slider("Channels", 4, 32, 16, key=_state.kept(FEAT_N))
st.image(crop_seen(img, vm.data_config), caption=label, width=160)
# side by side, a convnet sees the fine-tuned model's input size twice, so the maps line up (a ViT's
# pretrained position embeddings fix its size: then each runs at its own)
same = vms[-1].data_config if len(vms) == 2 and not cam.is_vit(vms[0].model) else None
for i, m in enumerate(vms):
    cfg = same or m.data_config
    x = eval_transform(cfg)(img)[None]  # (1, 3, H, W)
    acts = _cached.cached_view("features", m.model, images, (layer, cfg.size),
                               lambda: features.activations(m.model, layer, x)[0])  # (C, h, w)
    top = features.top_channels(acts, n)
    _charts.chart(plots.map_grid(acts[top].numpy(), [f"ch {c}" for c in top], cols=8,
                                title=f"{layer}: the {n} most active channels · {m.label}"),
                 key=f"{FEAT_PREFIX}{i}")
    ss[f"{FEAT_ACTS_PREFIX}{i}"] = acts

if len(vms) == 2:
    try:
        change = features.map_change(ss[f"{FEAT_ACTS_PREFIX}0"], ss[f"{FEAT_ACTS_PREFIX}1"])
    except ValueError:  # a ViT trained at another size: its maps have another grid
        st.caption(f"The two models see different input sizes ({vms[0].data_config.size} vs "
                   f"{vms[1].data_config.size} px), so their maps cannot be compared cell by cell.")
    else:
        st.metric(f"Relative change of `{layer}`'s maps, pretrained → fine-tuned", f"{change:.4f}",
                  help="‖after − before‖ / ‖before‖ over all channels: exactly 0 for a layer that stayed frozen")
elif _runs.trained_view() is not None:
    st.caption("Choose 'side by side' above to see how fine-tuning changed this layer's maps.")
