"""One finished run, read-only and large enough to project: its curves, confusion matrix, per-class accuracy,
top losses and Grad-CAM maps of a few of its validation images.

Whoever looks may own no lab of that run (the instructor on the Class page, a stranger holding a shared
link), so nothing here goes through the session's lab: the caller hands a run folder it found itself (under
the lab home), and the view shows only what the run says about itself. No run folder path, no lab id, no
classify-an-image, nothing that starts, stops or changes a job. The results are `_results.results` (built
once per run folder and version of its files, shared with the owner's Train page); the Grad-CAM maps are
computed once per run version too, and shared by every session that opens it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import streamlit as st

from pages import _cached, _charts, _results
from pages._results import pct, when
from vislab.serving import labs

CAM_IMAGES = 6  # validation images a run's Grad-CAM shows: two rows of three on a projector
CURVES_PREFIX = "runview_curves_"  # + the caller's key: one read-only view per key on a page
CM_PREFIX = "runview_cm_"
PC_PREFIX = "runview_pc_"
CAM_PREFIX = "runview_cam_"

_PROBLEMS = (FileNotFoundError, RuntimeError, ValueError, KeyError, OSError, TypeError)


def _in_home(folder: Path) -> bool:
    """Only run folders of the lab home are shown: the callers find them there, never from a raw URL value."""
    try:
        return folder.resolve().is_relative_to(labs.labs_dir().resolve())
    except (OSError, ValueError):
        return False


@st.cache_resource(max_entries=8, show_spinner="Loading the run…")
def _load(path: str, mtime: int):
    """(model, Run) of a run folder, once per version of its weights: like `_jobs.load_run`, but for a run
    of any lab (`_jobs.load_run` refuses runs outside the session's own lab, as it must for the lab's pages)."""
    from vislab.training import runs

    return runs.load(path)


def load(folder: Path):
    """(model, Run) of a finished (or stopped, or interrupted) run; FileNotFoundError with the reason."""
    from vislab.training import runs

    if not folder.is_dir() or not _in_home(folder):
        raise FileNotFoundError("this run is no longer on the server")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        ck = runs.checkpoint_of(folder)
        if ck is None:
            raise FileNotFoundError("this run has no saved weights (it ended before its first epoch, or is still "
                                    "training)")
        weights = ck / "model.safetensors"
    return _load(str(folder), weights.stat().st_mtime_ns)


def cam_picks(preds, classes: list[str], n: int = CAM_IMAGES) -> list[int]:
    """Indices of up to `n` validation images for the Grad-CAM row: one of each class in turn (the first
    readable image of each), so a projected row shows every class before any class twice."""
    by_class: dict[int, list[int]] = {}
    for i, (path, label) in enumerate(zip(preds.paths, preds.labels)):
        if os.path.isfile(path):
            by_class.setdefault(int(label), []).append(i)
    picks: list[int] = []
    depth = 0
    while len(picks) < n and any(depth < len(v) for v in by_class.values()):
        for label in sorted(by_class):
            if depth < len(by_class[label]) and len(picks) < n:
                picks.append(by_class[label][depth])
        depth += 1
    return picks


@st.cache_data(max_entries=16, show_spinner="Computing Grad-CAM of a few validation images…")
def gradcam(folder: str, version: tuple, _model, _run, _preds) -> dict:
    """Grad-CAM panels (title, crop the model saw, map) of a few validation images of the run in `folder`,
    each explained for the class the run predicted; computed once per run folder and version of its files."""
    from vislab.data.transforms import crop_seen, load_image
    from vislab.views import base as views, cam

    picks = cam_picks(_preds, _run.classes)
    if not picks:
        return {"panels": [], "error": "its validation images are no longer on the server"}
    cfg = _run.data_config
    images = [load_image(_preds.paths[i]) for i in picks]
    predicted = [int(_preds.predicted[i]) for i in picks]
    try:
        with _cached.model_lock(_model):
            layer = cam.default_layer(_model, _run.config.get("model"))
            found = cam.run(_model, views.batch(images, cfg), ["GradCAM"], layer, predicted)[0]
    except (cam.CamNotApplicable, ValueError, RuntimeError) as exc:
        return {"panels": [], "error": str(exc)}
    panels = []
    for n, i in enumerate(picks):
        true, pred = _run.classes[int(_preds.labels[i])], _run.classes[predicted[n]]
        mark = "✓" if true == pred else "✗"
        panels.append((f"{mark} true: {true[:18]}<br>pred: {pred[:18]}", np.asarray(crop_seen(images[n], cfg)),
                       found.maps[n]))
    return {"panels": panels, "error": None, "layer": layer}


def _header(run) -> None:
    cfg = run.config
    best = max((m["val_acc"] for m in run.metrics), default=None)
    st.markdown(f"### Best validation accuracy {pct(best)}")
    st.markdown(f"`{cfg.get('model', '?')}` · {cfg.get('head_kind', 'linear')} head · strategy "
                f"**{cfg.get('strategy', '?')}** · {len(run.metrics)} epoch{'s' if len(run.metrics) != 1 else ''} · "
                f"{len(run.classes)} classes · saved {when(cfg.get('saved'))}")


def show(folder: Path, key: str) -> None:
    """The read-only view of the run in `folder` (a run folder under the lab home), its widgets keyed by
    `key`. A missing or damaged run gets a message, never a traceback."""
    folder = Path(folder)
    try:
        model, run = load(folder)
    except _PROBLEMS as exc:
        st.warning(f"This run cannot be shown: {exc}.")
        return
    _header(run)
    try:
        shown = _results.results(str(folder), _results.stamp(folder), model, run, run.metrics)
    except _PROBLEMS as exc:
        st.warning(f"This run's results cannot be read: {exc}.")
        return
    _charts.chart(shown["curves"], key=f"{CURVES_PREFIX}{key}")
    if shown["preds"] is None:
        st.info("No validation images to evaluate for this run.")
        return
    left, right = st.columns(2)
    with left:
        _charts.chart(shown["confusion"], key=f"{CM_PREFIX}{key}")
    with right:
        _charts.chart(shown["per_class"], key=f"{PC_PREFIX}{key}")
    st.subheader("Top losses: the validation images it got most wrong")
    st.image(shown["grid"], width="stretch")
    _cams(folder, model, run, shown["preds"], key)


def _cams(folder: Path, model, run, preds, key: str) -> None:
    from vislab.figures import charts as plots

    st.subheader("Where it looks: Grad-CAM of validation images")
    try:
        found = gradcam(str(folder), _results.stamp(folder), model, run, preds)
    except _PROBLEMS as exc:
        found = {"panels": [], "error": str(exc)}
    if not found["panels"]:
        st.info(f"No Grad-CAM for this run: {found['error']}.")
        return
    st.caption(f"Each map explains the class the run predicted (✓ right, ✗ wrong), at layer `{found['layer']}`; "
               "bright: what raised that class's score.")
    _charts.chart(plots.cam_panels(found["panels"], 0.5, "Viridis"), key=f"{CAM_PREFIX}{key}")


if __name__ == "__main__":  # opened as a page of its own (Streamlit's old pages-folder mode)
    from pages import _route

    _route.through_app()
