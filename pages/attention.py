import numpy as np
import streamlit as st

from pages import _lab
from vislab import attention, plots, views
from vislab.transforms import crop_seen

_lab.init_state()
ss = st.session_state
st.title("ViT attention")
st.markdown("A Vision Transformer cuts the image into patches and lets every token attend to every other. "
            "The **class token**'s attention shows which patches it gathers information from; **rollout** "
            "multiplies the attention through the layers (with the skip connections) to follow it back to the "
            "input.")

vm = _lab.view_models("attn", allow_both=False)[0]
if not attention.has_attention(vm.model):
    st.error(str(views.ViewNotApplicable("self-attention layers", vm.model, attention.ATTENTION_MODELS,
                                         attention.why_not(vm.model))))
    if st.button("Switch to vit_tiny_patch16_224"):
        _lab.set_model("vit_tiny_patch16_224")
        st.rerun()
    st.stop()

images = _lab.pick_images("attn", max_n=1)
if not images:
    st.stop()
label, img = images[0]
cfg = vm.data_config
x = views.batch([img], cfg)  # (1, 3, H, W)
maps = _lab.cached_view("attention", vm.model, images, (), lambda: attention.attention_maps(vm.model, x))
# per layer (1, heads, N, N); the sliders below only re-fuse these maps
grid = attention.patch_grid(vm.model, x)
prefix = attention.num_prefix_tokens(vm.model)
cls = attention.cls_attention(maps, prefix, grid)  # (layers, heads, gh, gw)
crop = np.asarray(crop_seen(img, cfg))
st.caption(f"{len(maps)} layers × {cls.shape[1]} heads, a {grid[0]}×{grid[1]} patch grid, {prefix} prefix "
           f"token(s). Attention rows sum to 1.")

c1, c2, c3 = st.columns(3)
fusion = c1.selectbox("Rollout: head fusion", ["mean", "max", "min"], key="attn_fusion")
discard = c2.slider("Rollout: discard lowest", 0.0, 0.99, 0.9, 0.01, key="attn_discard",
                    help="Fraction of the weakest attention weights dropped in each layer before rollout")
opacity = c3.slider("Opacity", 0.0, 1.0, 0.6, 0.05, key="attn_opacity")
roll = attention.rollout(maps, grid, prefix, fusion, discard)
size = crop.shape[:2]  # patch-grid maps are laid over the crop, resized and scaled to [0, 1]
mean_last = cls[-1].mean(0)
_lab.chart(plots.cam_panels([("the crop the model saw", crop, None),
                             (f"rollout ({fusion}, discard {discard:.2f})", crop, views.fit_map(roll, size)),
                             ("last layer, heads averaged", crop, views.fit_map(mean_last, size))], opacity, "Inferno"),
           key="attn_main")
layer = st.slider("Layer", 1, len(maps), len(maps), key="attn_layer") - 1
heads = cls[layer]
_lab.chart(plots.cam_panels([(f"head {h}", crop, views.fit_map(heads[h], size)) for h in range(len(heads))],
                            opacity, "Inferno", cols=min(6, len(heads)),
                            title=f"Class-token attention, layer {layer + 1}, per head"),
           key="attn_heads")
