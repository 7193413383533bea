"""A finished run's results as the pages draw them: its curves, confusion matrix (a cell opens its images,
pages/_errors.py), per-class accuracy, top losses (one opens with Grad-CAM) and classify-an-image, built once
per run folder and version of its files; and how its feature cache ran, said for a learner. The Train page
draws them for the lab's last job and for a reopened run."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import streamlit as st
from PIL import Image, UnidentifiedImageError

from pages import _charts, _errors, _images, _jobs, _runs
from vislab.data.transforms import load_image, to_rgb
from vislab.figures import charts as plots, images as pictures
from vislab.serving import jobs
from vislab.training import evaluation, runs

# widget keys, each + the renderer's key ("job", "reopened"): one set of results per key on a page
CURVES_PREFIX = "curves_"
CM_PREFIX = "cm_"
PC_PREFIX = "pc_"
CLASSIFY_PREFIX = "classify_"
TOPK_PREFIX = "result_topk_"  # not cam.py's "topk_": each page owns its keys

RUN_FILES = ("status.json", "job.json", "events.jsonl", "progress.json", "config.json", "metrics.json",
             "predictions.json", "model.safetensors", "checkpoint/model.safetensors", "checkpoint/metrics.json",
             "checkpoint/config.json")


def pct(x: float | None) -> str:
    """An accuracy as the pages write it everywhere: 93.8%."""
    return "—" if x is None else f"{x:.1%}"


def when(saved: str | None = None, epoch_s: float | None = None, run_id: str = "") -> str:
    """A date as the pages write it everywhere: YYYY-MM-DD HH:MM (from a run's saved time, a timestamp, or
    the stamp its folder name starts with)."""
    if saved:
        return str(saved)[:16]
    if epoch_s:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch_s))
    try:
        return datetime.strptime(run_id[:15], "%Y%m%d-%H%M%S").strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return "—"


def curves(metrics):
    """The training curves with accuracy as a percentage (axis and hover)."""
    fig = plots.curves(metrics)
    fig.update_yaxes(tickformat=".0%", row=1, col=2)
    fig.update_traces(hovertemplate="epoch %{x}: %{y:.1%}", selector=lambda t: (t.name or "").endswith(" acc"))
    return fig


def stamp(folder: Path) -> tuple:
    """The versions of a run folder's files: what a cached result of that run is keyed on (with the folder)."""
    out = []
    for name in RUN_FILES:
        try:
            out.append((folder / name).stat().st_mtime_ns)
        except OSError:
            out.append(None)
    return tuple(out)


@st.cache_data(max_entries=32, show_spinner=False)
def finished_summary(folder: str, version: tuple) -> dict:
    """What the page says about a finished job, read from its files once per version of them."""
    job = jobs.Job(Path(folder))
    cfg = runs.read_config(folder)
    events = job.metrics()  # the epochs as the worker reported them (also of a run that saved none)
    images = (cfg.get("train_size") or 0) + (cfg.get("val_size") or 0) or None
    return {"metrics": events, "totals": _jobs.totals(job),
            "stories": _jobs.cache_stories(job, runs.read_metrics(folder) or events, images)}


@st.cache_resource(max_entries=16, show_spinner="Preparing the run's results…")
def results(folder: str, version: tuple, _model, _run, _metrics) -> dict:
    """A finished run's curves, predictions, confusion matrix, per-class accuracy and top-loss grid, built once
    per run folder and version of its files (shared, never changed by the page)."""
    from vislab.views import errors  # grad-cam loads when a run's results are first drawn, not with the page

    out = {"curves": curves(_metrics), "preds": None, "cells": [], "top": []}
    preds = runs.load_predictions(folder) or _runs.predict_saved_split(_model, _run)
    if preds is None or not len(preds.labels):
        return out
    classes = _run.classes
    cm = evaluation.confusion(preds, len(classes))
    per_class = plots.per_class_accuracy(evaluation.per_class_accuracy(cm), classes)
    per_class.update_yaxes(tickformat=".0%")
    imgs, caps, colours = [], [], []
    top = evaluation.top_losses(preds, 12)
    for i in top:
        p, y, k = preds.paths[i], preds.labels[i], preds.predicted[i]
        imgs.append(load_image(p))
        caps.append(f"true: {classes[y]}\npred: {classes[k]} (p={preds.probs[i, k]:.2f})\n"
                    f"loss {preds.losses[i]:.2f}")
        colours.append("#B00020" if k != y else "#006400")
    out.update(preds=preds, confusion=plots.confusion_matrix(cm, classes), per_class=per_class, top=top,
               cells=errors.cells(preds, len(classes)),
               grid=pictures.image_grid(imgs, caps, cols=6, cell=170, colours=colours))
    return out


def show_run(folder: Path, trained_model, run, metrics, key: str) -> None:
    """Curves, confusion matrix, per-class accuracy, top losses and classify-an-image for the finished run in
    `folder` (`run`: its runs.Run, `metrics`: its epochs), computed once per version of its files."""
    version = stamp(folder)
    shown = results(str(folder), version, trained_model, run, metrics)
    _charts.chart(shown["curves"], key=f"{CURVES_PREFIX}{key}")
    if shown["preds"] is None:
        st.info("No validation images to evaluate for this run.")
        return
    _errors.follow_run(folder, key)  # another run clears the cell and the top loss opened below
    left, right = st.columns(2)
    with left:
        _errors.confusion_chart(shown["confusion"], run.classes, shown["cells"], f"{CM_PREFIX}{key}", key)
    with right:
        _charts.chart(shown["per_class"], key=f"{PC_PREFIX}{key}")
    _errors.cell_section(folder, version, trained_model, run, shown["preds"], shown["cells"], key)
    st.subheader("Top losses: the validation images it got most wrong")
    grid = shown["grid"]
    st.image(grid, width="stretch")
    _images.download_png(lambda: grid, f"top_losses_{key}.png", "Download top losses (PNG)")
    _errors.top_loss_section(folder, version, trained_model, run, shown["preds"], shown["top"], key)
    _classify(trained_model, run, key)
    st.caption(f"Run folder: `{folder}`")


def _classify(trained_model, run, key: str) -> None:
    st.subheader("Classify a new image")
    up = st.file_uploader("An image", type=["jpg", "jpeg", "png", "bmp", "webp", "gif", "tif", "tiff"],
                          key=f"{CLASSIFY_PREFIX}{key}")
    if up is None:
        return
    try:
        img = to_rgb(Image.open(up))
    except (UnidentifiedImageError, OSError) as exc:
        st.error(f"Cannot read this file as an image: {exc}")
        return
    classes = run.classes
    c1, c2 = st.columns([1, 2])
    c1.image(img, caption=up.name, width="stretch")
    with c2:
        _charts.chart(plots.topk(evaluation.classify(trained_model, img, run.data_config, classes,
                                                     k=min(5, len(classes)))), key=f"{TOPK_PREFIX}{key}")


def cache_captions(stories: list[tuple[str, str]]) -> None:
    """How the feature cache ran, said for a learner; the engineering lines folded away."""
    if not stories:
        return
    for story, _ in stories:
        st.caption(story)
    with st.expander("Feature cache: the engineering detail"):
        for _, line in stories:
            st.caption(line)


if __name__ == "__main__":  # opened as a page of its own (Streamlit's old pages-folder mode)
    from pages import _route

    _route.through_app()
