import numpy as np
import streamlit as st

from pages import _cached, _charts, _dataset, _images, _route, _runs, _state, _working
from vislab.views import attention, cam, base as views
from vislab.models import heads
from vislab.figures import charts as plots
from vislab.data.transforms import crop_seen

_route.through_app()  # first: a page opened on its own (the first request after a restart) goes through app.py

# ---- this page's keys (kept: a person's settings, see _state.kept) ------------------------------------------
ATTN_FUSION = "attn_fusion"
ATTN_DISCARD = "attn_discard"
ATTN_OPACITY = "attn_opacity"
ATTN_MAIN = "attn_main"
ATTN_LAYER = "attn_layer"
ATTN_HEADS = "attn_heads"

_dataset.open_page()
ss = st.session_state
st.title("Attention")
st.markdown("Self-attention lets every token look at every other. In a **Vision Transformer** the tokens are "
            "image patches; with the **attention head** they are the cells of a pretrained CNN's last feature "
            "map (convolutions below, self-attention above). The **class token**'s attention shows which tokens "
            "it gathers information from; **rollout** multiplies the attention through the layers (with the "
            "skip connections) to follow it back to the input.")

vm = _runs.view_models("attn", allow_both=False)[0]
if not attention.has_attention(vm.model):
    st.error(str(views.ViewNotApplicable("self-attention layers", vm.model, attention.ATTENTION_MODELS,
                                         attention.why_not(vm.model))))
    refusal = heads.attention_head_refusal(vm.model)
    if refusal is None:  # a CNN: its own pretrained features, read by a trained attention head
        st.markdown(f"**Teach `{ss[_state.MODEL]}` to attend:** the attention head puts one self-attention block "
                    "on its last feature map (each cell a token, plus a class token). Train it head-only on "
                    "your data: the frozen convolutions are cached once, so it trains in seconds, and this "
                    "page then shows where the class token looks, beside Grad-CAM of the same model.")
        if ss[_state.HEAD] == "attention":
            st.info("The working model has the attention head: train it (strategy `head`) on the Train page, "
                    "then come back.")
        elif st.button("Use the attention head", type="primary"):
            _working.set_model(ss[_state.MODEL], "attention")
            st.rerun()
        c1, c2 = st.columns(2)
        c1.page_link("pages/freeze.py", label="Freeze & BatchNorm: check what trains", icon=":material/ac_unit:")
        c2.page_link("pages/train.py", label="Train the head", icon=":material/monitoring:")
    from vislab.models import weights

    vit = "vit_tiny_patch16_224"
    vit_weights = weights.status(vit, "timm").available
    if st.button(f"Switch to {vit} (a real ViT{'' if vit_weights else ', random weights here'})",
                 help=None if vit_weights else weights.missing_advice(vit, "timm")):
        _working.set_model(vit, "linear")
        st.rerun()
    if not vit_weights:
        st.caption(f"No pretrained `{vit}` weights on this machine: its attention maps would show an untrained "
                   "network. The attention head above uses this model's own pretrained convolutions instead.")
    st.stop()

images = _images.pick_images("attn", max_n=1)
if not images:
    st.stop()
label, img = images[0]
cfg = vm.data_config
x = views.batch([img], cfg)  # (1, 3, H, W)
found = _cached.cached_view("attention", vm.model, images, (), lambda: attention.view(vm.model, x))
grid, prefix = found.grid, found.num_prefix_tokens
cls = found.cls()  # (blocks, heads, gh, gw); the sliders below only re-fuse these maps
crop = np.asarray(crop_seen(img, cfg))
cell = found.cell
tokens = "feature-map cells (the CNN's stride)" if found.hybrid else "patches"
st.caption(f"{len(found.maps)} layer(s) × {cls.shape[1]} heads over a {grid[0]}×{grid[1]} grid of {tokens}: "
           f"one cell is {cell[0]:.0f}×{cell[1]:.0f} pixels of the {found.image_size[0]}×{found.image_size[1]} "
           f"input; {prefix} prefix token(s). Attention rows sum to 1 (largest deviation "
           f"{found.row_sum_error():.1e}).")
if found.hybrid:
    st.caption("A cell's token is the CNN's feature vector there: it sees far beyond its own cell (its receptive "
               "field), so the map says which cells the class token reads, not which pixels.")

c1, c2, c3 = st.columns(3)
fusion = c1.selectbox("Rollout: head fusion", ["mean", "max", "min"], key=_state.kept(ATTN_FUSION))
discard = c2.slider("Rollout: discard lowest", 0.0, 0.99, 0.0 if found.hybrid else 0.9, 0.01,
                    key=_state.kept(ATTN_DISCARD),
                    help="Fraction of the weakest attention weights dropped in each layer before rollout")
opacity = c3.slider("Opacity", 0.0, 1.0, 0.6, 0.05, key=_state.kept(ATTN_OPACITY))
roll = found.rollout(fusion, discard)
size = crop.shape[:2]  # grid maps are laid over the crop, resized and scaled to [0, 1]
mean_last = cls[-1].mean(0)
panels = [("the crop the model saw", crop, None),
          (f"rollout ({fusion}, discard {discard:.2f})", crop, views.fit_map(roll, size)),
          ("last layer, heads averaged", crop, views.fit_map(mean_last, size))]
arch = vm.arch or ss[_state.MODEL]
layer = _cached.cached_view("cam_layer", vm.model, [], (arch,), lambda: cam.default_layer(vm.model, arch))
explained = _cached.cached_view("attn_gradcam", vm.model, images, (layer,),
                             lambda: cam.explain(vm.model, x, vm.classes, ["GradCAM"], [layer]))
if explained.results:
    top = explained.topk[0][0]
    panels.append((f"Grad-CAM · {layer}<br>{top[0][:24]} ({top[1]:.0%})", crop, explained.results[0].maps[0]))
_charts.chart(plots.cam_panels(panels, opacity, "Inferno"), key=ATTN_MAIN)
for what, why in explained.errors:
    st.warning(f"{what}: {why}")
if found.hybrid:
    st.caption("Grad-CAM weights the backbone's last feature maps by the gradient of the predicted class, "
               "through the attention head: two answers to 'where does it look', from the same model.")
_state.clamp(ATTN_LAYER, 1, len(found.maps))  # kept from a deeper model
layer_n = (st.slider("Layer", 1, len(found.maps), len(found.maps), key=_state.kept(ATTN_LAYER))
           if len(found.maps) > 1 else 1) - 1
per_head = cls[layer_n]
_charts.chart(plots.cam_panels([(f"head {h}", crop, views.fit_map(per_head[h], size)) for h in range(len(per_head))],
                            opacity, "Inferno", cols=min(6, len(per_head)),
                            title=f"Class-token attention, layer {layer_n + 1}, per head"),
           key=ATTN_HEADS)
