from functools import partial
from pathlib import Path

import streamlit as st

from pages import _route, _state
from pages._cached import cached_view, model_lock
from pages._dataset import open_page
from pages._images import PHOTOS, download_png, photo
from pages._runs import view_models
from vislab.views import featurevis, units, base as views

_route.through_app()  # first: a page opened on its own (the first request after a restart) goes through app.py

# ---- this page's keys (kept: a person's settings, see _state.kept) ------------------------------------------
LAYERS_OUT = "layers_out"  # (model label, units.UnitPatches, image labels) of the last scan
LAYERS_VIS = "layers_vis"  # (model label, featurevis.Visualisation) of the last feature visualisation
LAYERS_CHANNELS = "layers_channels"
LAYERS_K = "layers_k"
LAYERS_MODE = "layers_mode"
LAYERS_N = "layers_n"
LAYERS_N_IMG = "layers_n_img"
LAYERS_SRC = "layers_src"
LAYERS_STAGES = "layers_stages"
LAYERS_STOP = "layers_stop"
LAYERS_VIS_CHANNEL = "layers_vis_channel"
LAYERS_VIS_GO = "layers_vis_go"
LAYERS_VIS_SIZE = "layers_vis_size"
LAYERS_VIS_STAGE = "layers_vis_stage"
LAYERS_VIS_STEPS = "layers_vis_steps"
LAYERS_VIS_STOP = "layers_vis_stop"


open_page()
ss = st.session_state
st.title("What each layer responds to")
st.markdown(
    "Transfer learning rests on a claim: **early layers detect general things** (edges, colours, simple "
    "textures), **late layers specific ones** (parts, whole objects). Below, for a few stages from the stem to "
    "the last, the image patches that excite a channel most, each cut to the part of the image that unit can "
    "see (its *receptive field*, computed from the architecture). Then an image *made* to excite one channel.")
with st.expander("What these pictures show, and what they do not"):
    st.markdown(
        "- A patch is where one channel's activation peaks in one image of **these** images: a correlation "
        "within this dataset, not proof that the channel 'detects' a concept. A unit may answer to several "
        "unrelated things, and only its strongest answers are shown (its maxima, not its typical response).\n"
        "- The crop is the unit's whole receptive field; the unit weighs its centre most. Late stages see more "
        "than the image (their field is clipped at the border, marked ✂), so their patches are whole images.\n"
        "- A feature visualisation is what the channel's weights prefer, found by gradient ascent with jitter and "
        "a smooth colour parameterisation; with random weights it shows noise, and it is one of many images "
        "that would excite the channel.")

vm = view_models("layers", allow_both=False)[0]
cfg = vm.data_config
try:
    stages = cached_view("layer_stages", vm.model, [], (tuple(cfg.input_size),),
                         lambda: units.stage_layers(vm.model, tuple(cfg.input_size)))
except views.ViewNotApplicable as exc:
    stages = []
    st.error(str(exc))
if not stages:
    st.error(str(views.ViewNotApplicable("stages with spatial feature maps", vm.model, ("mobilenet_v2", "resnet18"))))
    st.stop()
names = [s for s, _ in stages]
module_of = dict(stages)

st.subheader("Top patches per channel")
c1, c2, c3 = st.columns([3, 2, 1])
chosen = c1.multiselect("Stages (stem → last)", names, default=units.spread(names, 4), key=_state.kept(LAYERS_STAGES))
mode = c2.radio("Channels", ["most active", "by number"], horizontal=True, key=_state.kept(LAYERS_MODE))
channels, n_channels = None, 8
if mode == "most active":
    n_channels = c2.slider("How many per stage", 1, 16, 8, key=_state.kept(LAYERS_N),
                           help="The channels with the highest mean over the images of their maximum")
else:
    text = c2.text_input("Channel numbers (the same for every stage)", "0, 1, 2, 3", key=_state.kept(LAYERS_CHANNELS))
    try:
        channels = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        st.error(f"'{text}' is not a list of channel numbers (e.g. 0, 5, 12)")
        st.stop()
k = c3.slider("Patches (k)", 2, 12, 6, key=_state.kept(LAYERS_K))

ds = ss.get(_state.DATASET)
sources = (["the lab's dataset"] if ds else []) + ["bundled photos"]
source = st.radio("Images", sources, horizontal=True, key=_state.kept(LAYERS_SRC),
                  help="Pick a dataset on the Data page to scan your own images")
if source == "the lab's dataset":
    items = ds.used.items
    _state.clamp(LAYERS_N_IMG, 1, min(500, len(items)))  # kept from a larger dataset
    n_img = 1 if len(items) <= 1 else st.slider(
        "Images to scan", 1, min(500, len(items)), min(60, len(items)), key=_state.kept(LAYERS_N_IMG),
        help="Spread evenly over the dataset; every image takes one forward pass")
    picked = units.spread(items, n_img)
    images = [p for p, _ in picked]
    labels = [f"{ds.report.classes[y]}: {Path(p).name}" for p, y in picked]
    per_image = 1
else:
    images = [photo(n) for n in PHOTOS]
    labels = list(PHOTOS)
    per_image = k  # five photos: several places per photo, at least half a receptive field apart
    st.caption("Five photos only: each may give several patches (separate local maxima). A dataset of your own "
               "gives one patch per image, from many more images.")

if st.button("Find the top patches", type="primary", disabled=not chosen):
    ss.pop(LAYERS_OUT, None)  # never leave an old result on screen after a new request
    progress = st.progress(0.0, text="starting…")
    st.button("Stop", key=LAYERS_STOP)  # a click reruns the page, which ends the scan between batches
    try:
        with model_lock(vm.model):
            res = units.top_patches(vm.model, cfg, images, [module_of[s] for s in chosen], channels, n_channels, k,
                                    per_image, stages={module_of[s]: s for s in chosen},
                                    on_progress=lambda d, t: progress.progress(d / t, text=f"{d} of {t} images"))
    except ValueError as exc:  # a channel number the stage does not have, an unreadable image
        st.error(str(exc))
    else:
        progress.progress(1.0, text=f"done: {res.images_seen} images in {res.seconds:.1f} s")
        ss[LAYERS_OUT] = (vm.label, units.shrink(res, 96), labels)  # display-sized crops: small per session

out = ss.get(LAYERS_OUT)
if out and out[0] == vm.label:
    _, res, shown_labels = out
    st.caption(f"{res.images_seen} of {res.images_total} images scanned in {res.seconds:.1f} s · "
               f"{cfg.size}×{cfg.size} px as the model saw them · value: the channel's activation there")
    for lp in res.layers:
        f = lp.field
        wide = " (wider than the image: every patch is clipped)" if min(f.size) > cfg.size else ""
        st.markdown(f"**{lp.stage}** · receptive field **{f.size[0]}×{f.size[1]} px**{wide}, one unit every "
                    f"{f.jump[0]} px · {lp.num_channels} channels")
        for c, row in zip(lp.channels, lp.patches):
            if not row:
                continue
            st.image([units.enlarge(p.crop, 96) for p in row], width=96,
                     caption=[f"ch {c} · {p.value:.2f}{' ✂' if p.clipped else ''} · {shown_labels[p.image][:28]}"
                              for p in row])
    download_png(partial(units.grid, res, labels=shown_labels), "top_patches.png", "Download all patches (PNG)")

st.subheader("Feature visualisation")
st.markdown("An image optimised to excite one channel (Fourier, decorrelated-colour parameterisation; jitter, "
            "scale and rotation each step). Small and short here: it runs on this server while you wait.")
v1, v2, v3, v4 = st.columns(4)
vis_stage = v1.selectbox("Stage", names, index=len(names) // 2, key=_state.kept(LAYERS_VIS_STAGE))
channel = int(v2.number_input("Channel", 0, 8191, 0, key=_state.kept(LAYERS_VIS_CHANNEL)))
size = v3.select_slider("Size (px)", [64, 96, 128], 96, key=_state.kept(LAYERS_VIS_SIZE))
steps = v4.select_slider("Steps", [32, 64, 128, 256], 128, key=_state.kept(LAYERS_VIS_STEPS))
if out and out[0] == vm.label:
    shown = {lp.stage: lp.channels for lp in out[1].layers}
    if vis_stage in shown:
        st.caption(f"Channels shown above for {vis_stage}: {', '.join(map(str, shown[vis_stage]))}")
if st.button("Visualise", key=LAYERS_VIS_GO):
    ss.pop(LAYERS_VIS, None)
    progress = st.progress(0.0, text="starting…")
    st.button("Stop", key=LAYERS_VIS_STOP)  # a click reruns the page, which ends the loop between steps
    try:
        with model_lock(vm.model):
            vis = featurevis.visualise(vm.model, module_of[vis_stage], channel, cfg,
                                       featurevis.VisConfig(size=size, steps=steps),
                                       on_progress=lambda s, n, val: progress.progress(
                                           s / n, text=f"step {s} of {n} · activation {val:.2f}"))
    except ValueError as exc:  # a channel the stage does not have
        st.error(str(exc))
    else:
        progress.progress(1.0, text=f"done in {vis.seconds:.1f} s")
        ss[LAYERS_VIS] = (vm.label, vis)

shown_vis = ss.get(LAYERS_VIS)
if shown_vis and shown_vis[0] == vm.label:
    vis = shown_vis[1]
    left, right = st.columns([1, 2])
    left.image(vis.image, width=256, caption=f"{vis.layer} · channel {vis.channel}")
    with right:
        st.line_chart({"activation": vis.objective}, x_label="step", y_label="mean activation", height=220)
    from PIL import Image

    download_png(partial(Image.fromarray, vis.image), f"featurevis_{vis.layer}_{vis.channel}.png")
