import numpy as np
import streamlit as st

from pages import _cached, _charts, _dataset, _images, _route, _runs, _sanity, _scores, _state
from vislab.views import cam, base as views
from vislab.figures import charts as plots
from vislab.data.transforms import crop_seen

_route.through_app()  # first: a page opened on its own (the first request after a restart) goes through app.py

# ---- this page's keys (kept: a person's settings, see _state.kept) ------------------------------------------
CAM_OUT = "cam_out"  # the CAM page's last computed panels, shown until the inputs change (with their scores)
CAM_METHODS = "cam_methods"
CAM_LAYER = "cam_layer"
CAM_MORE_LAYERS = "cam_more_layers"
CAM_TARGET_MODE = "cam_target_mode"
CAM_TOPK_CLASS = "cam_topk_class"
CAM_CLASS = "cam_class"
CAM_OPACITY = "cam_opacity"
CAM_COLOURS = "cam_colours"
CAM_ROAD = "cam_road"
CAM_STOP = "cam_stop"
TOPK_PREFIX = "topk_"
CAM_PREFIX = "cam_"

_dataset.open_page()
ss = st.session_state
st.title("CAM & Grad-CAM")
st.markdown("Where does the network look when it decides? **CAM** reads it exactly off a head that is global "
            "average pooling + one linear layer; **Grad-CAM** and friends weight a layer's feature maps by the "
            "gradient of the class score, so they work for any model.")

vms = _runs.view_models("cam")
images = _images.pick_images("cam", max_n=8)
if not images:
    st.info("Pick at least one image.")
    st.stop()

ref = vms[0]
layers = cam.layer_choices(ref.model)
default = _cached.cam_layer(ref.model, ss[_state.MODEL])
c1, c2, c3 = st.columns([3, 2, 2])
methods = c1.multiselect("Methods", [cam.CLASSIC] + list(cam.METHODS),
                         default=[cam.CLASSIC, "GradCAM", "GradCAM++", "LayerCAM"], key=_state.kept(CAM_METHODS))
layer = c2.selectbox("Target layer", layers if default in layers else [default] + layers,
                     index=(layers.index(default) if default in layers else 0), key=_state.kept(CAM_LAYER),
                     help="Default: the catalog's natural layer (the last feature maps)")
note = cam.early_layer_note(ref.model, layer)
if note:
    st.warning(note)
extra_layers = c3.multiselect("Compare with layers", [l for l in layers if l != layer],
                              key=_state.kept(CAM_MORE_LAYERS),
                              max_selections=3)
c4, c5, c6 = st.columns([2, 2, 2])
target_mode = c4.radio("Explain", ["predicted class", "one of the top 5", "a class by name"], horizontal=True,
                       key=_state.kept(CAM_TARGET_MODE))
class_pick = None
if target_mode == "one of the top 5":
    x0 = views.batch([images[0][1]], ref.data_config)  # (1, 3, H, W): the first image decides the list
    probs, idx = _cached.cached_view("topk", ref.model, images[:1], (), lambda: cam.predict_topk(ref.model, x0, 5))
    top = [(ref.classes[j], float(p)) for p, j in zip(probs[0], idx[0])]
    class_pick = c5.selectbox("Class", [n for n, _ in top], key=_state.kept(CAM_TOPK_CLASS),
                              format_func=lambda n: f"{n} ({dict(top)[n]:.1%})")
elif target_mode == "a class by name":
    class_pick = c5.selectbox("Class", ref.classes, key=_state.kept(CAM_CLASS))
opacity = c6.slider("Opacity", 0.0, 1.0, 0.5, 0.05, key=_state.kept(CAM_OPACITY))
scale = c6.selectbox("Colour map", list(plots.CAM_COLOURSCALES), key=_state.kept(CAM_COLOURS))
road = st.toggle("Faithfulness score (grad-cam's ROAD: higher = the map points at what the model uses)",
                 key=_state.kept(CAM_ROAD))
slow = [m for m in methods if m in cam.SLOW]
if slow:
    shapes = _cached.output_shapes((ss[_state.MODEL], "view", len(ref.classes), tuple(ref.data_config.input_size)),
                                   ref.model)
    channels = shapes.get(layer, (0,))[0]
    per_image = _cached.forward_seconds(ref.model, tuple(ref.data_config.input_size)) * max(channels, 1)
    st.warning(f"{', '.join(slow)}: one forward pass per channel of `{layer}` ({channels} channels) for each "
               f"image, about {per_image:.0f} s per image per method here ({per_image * len(images) * len(slow) * len(vms):.0f} s "
               "in all). Progress shows below; Stop ends it between images.")
# what the panels were computed from: when it changes, the panels and their scores are dropped together
# (opacity and colours only redraw them)
inputs = (ss[_state.MODEL], [(vm.label, vm.run) for vm in vms], [(n, img.size) for n, img in images], methods,
          layer, extra_layers, target_mode, class_pick, road)
if ss.get(CAM_OUT) is not None and ss[CAM_OUT].get("inputs") != inputs:
    ss.pop(CAM_OUT, None)
    ss.pop(_scores.CAM_SCORES, None)
    ss.pop(_sanity.CAM_SANITY, None)
if not methods:
    st.stop()

if st.button("Compute", type="primary"):
    ss.pop(CAM_OUT, None)  # never leave an old result on screen after a new request
    ss.pop(_scores.CAM_SCORES, None)
    ss.pop(_sanity.CAM_SANITY, None)
    out = {"panels": [], "topk": [], "errors": [], "maps": [], "inputs": inputs}
    progress = st.progress(0.0, text="starting…")
    stop = st.button("Stop", key=CAM_STOP)  # a click reruns the page, which ends the loop between images
    for vm in vms:
        x = views.batch([img for _, img in images], vm.data_config)  # (B, 3, H, W)
        crops = [np.asarray(crop_seen(img, vm.data_config)) for _, img in images]
        which = f" · {vm.label}" if len(vms) > 1 else ""
        with _cached.model_lock(vm.model):
            found = cam.explain(vm.model, x, vm.classes, methods, [layer] + extra_layers, target=class_pick,
                                classic_layer=default, road=road, on_progress=lambda m, i, n: progress.progress(
                                    i / n, text=f"{m}: image {i + 1} of {n}"))
        out["topk"].append((vm.label, found.topk))
        out["errors"] += [f"{tag}{which}: {why}" for tag, why in found.errors]
        out["maps"].append(_scores.maps_of(vm, found, several_layers=bool(extra_layers)))
        for res, scores in zip(found.results, found.road):
            for b in range(len(res.maps)):
                title = (f"{res.method} · {res.layer}{which}"
                         f"<br>{vm.classes[found.classes[b]][:24]} · {res.seconds:.2f} s")
                if scores is not None:
                    title += f" · ROAD {scores[b]:+.3f}"
                out["panels"].append((b, title, crops[b], res.maps[b]))
    progress.progress(1.0, text="done")
    ss[CAM_OUT] = out

out = ss.get(CAM_OUT)
if out:
    for err in out["errors"]:
        st.error(err)
    for b, (label, img) in enumerate(images):
        panels = [(t, crop, m) for i, t, crop, m in out["panels"] if i == b]
        if not panels:
            continue
        st.subheader(label)
        left, right = st.columns([1, 3])  # the crop and the top-5 above, the panels below at full width:
        with left:  # three a row, ~240 px each at 1280 px (beside the crop they were ~120 px)
            first_crop = panels[0][1]
            st.image(first_crop, caption="the crop the model saw", width="stretch")
        with right:
            for model_label, per_image in out["topk"]:
                if b < len(per_image):
                    _charts.chart(plots.topk(per_image[b], "Top-5" + (f" · {model_label}" if len(vms) > 1 else "")),
                                 key=f"{TOPK_PREFIX}{b}_{model_label}")
        _charts.chart(plots.cam_panels(panels, opacity, plots.CAM_COLOURSCALES[scale]), key=f"{CAM_PREFIX}{b}")
    _scores.section(out, vms, images)
    _sanity.section(out, vms, images, opacity, plots.CAM_COLOURSCALES[scale])
