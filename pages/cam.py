import numpy as np
import streamlit as st
import torch

from pages import _lab
from vislab import cam, plots
from vislab.transforms import crop_seen, eval_transform

_lab.init_state()
ss = st.session_state
st.title("CAM & Grad-CAM")
st.markdown("Where does the network look when it decides? **CAM** reads it exactly off a head that is global "
            "average pooling + one linear layer; **Grad-CAM** and friends weight a layer's feature maps by the "
            "gradient of the class score, so they work for any model.")

vms = _lab.view_models("cam")
images = _lab.pick_images("cam", max_n=8)
if not images:
    st.info("Pick at least one image.")
    st.stop()

ref = vms[0]
layers = cam.layer_choices(ref.model)
default = _lab.cam_layer(ref.model, ss[_lab.MODEL])
c1, c2, c3 = st.columns([3, 2, 2])
methods = c1.multiselect("Methods", ["CAM (classic)"] + list(cam.METHODS), default=["CAM (classic)", "GradCAM", "GradCAM++", "LayerCAM"], key="cam_methods")
layer = c2.selectbox("Target layer", layers if default in layers else [default] + layers,
                     index=(layers.index(default) if default in layers else 0), key="cam_layer",
                     help="Default: the catalog's natural layer (the last feature maps)")
note = cam.early_layer_note(ref.model, layer)
if note:
    st.warning(note)
extra_layers = c3.multiselect("Compare with layers", [l for l in layers if l != layer], key="cam_more_layers",
                              max_selections=3)
c4, c5, c6 = st.columns([2, 2, 2])
target_mode = c4.radio("Explain", ["predicted class", "one of the top 5", "a class by name"], horizontal=True,
                       key="cam_target_mode")
class_pick = None
if target_mode == "one of the top 5":
    x0 = eval_transform(ref.data_config)(images[0][1])[None]  # (1, 3, H, W): the first image decides the list
    probs, idx = _lab.cached_view("topk", ref.model, images[:1], (), lambda: cam.predict_topk(ref.model, x0, 5))
    top = [(ref.classes[j], float(p)) for p, j in zip(probs[0], idx[0])]
    class_pick = c5.selectbox("Class", [n for n, _ in top], key="cam_topk_class",
                              format_func=lambda n: f"{n} ({dict(top)[n]:.1%})")
elif target_mode == "a class by name":
    class_pick = c5.selectbox("Class", ref.classes, key="cam_class")
opacity = c6.slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="cam_opacity")
scale = c6.selectbox("Colour map", list(plots.CAM_COLOURSCALES), key="cam_colours")
road = st.toggle("Faithfulness score (grad-cam's ROAD: higher = the map points at what the model uses)",
                 key="cam_road")
slow = [m for m in methods if m in cam.SLOW]
if slow:
    shapes = _lab.output_shapes((ss[_lab.MODEL], "view", len(ref.classes), tuple(ref.data_config.input_size)),
                                ref.model)
    channels = shapes.get(layer, (0,))[0]
    per_image = _lab.forward_seconds(ref.model, tuple(ref.data_config.input_size)) * max(channels, 1)
    st.warning(f"{', '.join(slow)}: one forward pass per channel of `{layer}` ({channels} channels) for each "
               f"image, about {per_image:.0f} s per image per method here ({per_image * len(images) * len(slow) * len(vms):.0f} s "
               "in all). Progress shows below; Stop ends it between images.")
if not methods:
    st.stop()

if st.button("Compute", type="primary"):
    ss.pop("cam_out", None)  # never leave an old result on screen after a new request
    out = {"panels": [], "topk": [], "errors": []}
    progress = st.progress(0.0, text="starting…")
    stop = st.button("Stop", key="cam_stop")  # a click reruns the page, which ends the loop between images
    for vm in vms:
        cfg = vm.data_config
        x = torch.stack([eval_transform(cfg)(img) for _, img in images])  # (B, 3, H, W)
        crops = [np.asarray(crop_seen(img, cfg)) for _, img in images]
        with _lab.model_lock(vm.model):
            probs, idx = cam.predict_topk(vm.model, x, 5)
            if class_pick is not None and class_pick in vm.classes:
                classes = [vm.classes.index(class_pick)] * len(images)
            else:
                classes = [int(i[0]) for i in idx]
            out["topk"].append((vm.label, [[(vm.classes[j], float(p)) for p, j in zip(pr, ix)]
                                           for pr, ix in zip(probs, idx)]))
            for lyr in [layer] + extra_layers:
                for method in methods:
                    tag = f"{method} · {lyr}" + (f" · {vm.label}" if len(vms) > 1 else "")
                    try:
                        if method == "CAM (classic)":
                            res = cam.classic(vm.model, x, classes, layer=default)
                        else:
                            res = cam.run(vm.model, x, [method], lyr, classes,
                                          on_progress=lambda m, i, n: progress.progress(
                                              i / n, text=f"{m}: image {i + 1} of {n}"))[0]
                    except (cam.CamNotApplicable, ValueError, RuntimeError) as exc:
                        out["errors"].append(f"{tag}: {exc}")
                        continue
                    scores = cam.road_score(vm.model, x[:len(res.maps)], res.maps, classes) if road else None
                    for b in range(len(res.maps)):
                        title = f"{res.method} · {res.layer}" + (f" · {vm.label}" if len(vms) > 1 else "")
                        title += f"<br>{vm.classes[classes[b]][:24]} · {res.seconds:.2f} s"
                        if scores is not None:
                            title += f" · ROAD {scores[b]:+.3f}"
                        out["panels"].append((b, title, crops[b], res.maps[b]))
    progress.progress(1.0, text="done")
    ss["cam_out"] = out

out = ss.get("cam_out")
if out:
    for err in out["errors"]:
        st.error(err)
    for b, (label, img) in enumerate(images):
        panels = [(t, crop, m) for i, t, crop, m in out["panels"] if i == b]
        if not panels:
            continue
        st.subheader(label)
        left, right = st.columns([1, 3])
        with left:
            first_crop = panels[0][1]
            st.image(first_crop, caption="the crop the model saw", width="stretch")
            for model_label, per_image in out["topk"]:
                if b < len(per_image):
                    _lab.chart(plots.topk(per_image[b], "Top-5" + (f" · {model_label}" if len(vms) > 1 else "")),
                               key=f"topk_{b}_{model_label}")
        with right:
            _lab.chart(plots.cam_panels(panels, opacity, plots.CAM_COLOURSCALES[scale], cols=min(4, len(panels))),
                       key=f"cam_{b}")
