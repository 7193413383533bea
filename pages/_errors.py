"""Errors you can click, under a finished run's results (pages/_results.show_run): a confusion-matrix cell
(true A, predicted B) or one top-loss image opens those validation images with the model's confidence and
Grad-CAM for the predicted and for the true class side by side (vislab.views.errors).

A click on the matrix sets the "Show cell" box, which is also the way in by keyboard (and on a projector,
where a cell is hard to hit). Both boxes are kept settings: they stay set across a page switch and a reload,
and are cleared when the run shown changes. Maps are computed on demand for the chosen images only, under
the model's lock (a loaded run is shared by every session), once per run folder version and choice."""

from __future__ import annotations

import functools
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from pages import _cached, _charts, _state
from pages._state import PROJECTOR

# widget keys, each + show_run's key ("job", "reopened", "study"): one set per results on a page
ERR_CELL_PREFIX = "errors_cell_"  # the cell opened, "true:predicted" class indices (None: none)
ERR_LOSS_PREFIX = "errors_loss_"  # the top-loss image opened (its path; None: none)
ERR_RUN_PREFIX = "errors_run_"  # the run the two boxes' values belong to: another run clears them
ERR_EMPTY_PREFIX = "errors_empty_"  # a click on an empty cell, said once ("true A, predicted B": no image)


def _cell_value(cell) -> str:
    return f"{cell.true}:{cell.predicted}"


def _cell_label(cell, classes: list[str]) -> str:
    n = f"{cell.count} image{'s' if cell.count != 1 else ''}"
    return f"true {classes[cell.true]} → predicted {classes[cell.predicted]} · {n}"


def follow_run(folder: Path, key: str) -> None:
    """Clear this key's chosen cell and top loss when the run shown is not the one they were chosen on."""
    ss = st.session_state
    mark = _state.kept(f"{ERR_RUN_PREFIX}{key}")
    if ss.get(mark) != folder.name:
        ss[_state.kept(f"{ERR_CELL_PREFIX}{key}")] = None
        ss[_state.kept(f"{ERR_LOSS_PREFIX}{key}")] = None
        ss[mark] = folder.name


def _clicked(chart_key: str, key: str, classes: tuple[str, ...], options: tuple[str, ...]) -> None:
    """The matrix's on_select: the clicked cell (x: predicted, y: true) into the "Show cell" box."""
    ss = st.session_state
    points = ss[chart_key].selection.points if chart_key in ss else []
    if not points:
        return
    point = points[0]
    try:
        true, predicted = classes.index(point["y"]), classes.index(point["x"])
    except (KeyError, ValueError):
        return
    value = f"{true}:{predicted}"
    if value in options:
        ss[f"{ERR_CELL_PREFIX}{key}"] = value
    else:
        ss[f"{ERR_EMPTY_PREFIX}{key}"] = (f"No validation image is true {classes[true]} and predicted "
                                         f"{classes[predicted]}.")


def confusion_chart(fig, classes: list[str], cells: list, chart_key: str, key: str) -> None:
    """The confusion matrix as _charts.chart draws it, plus a click on a cell that opens its images."""
    n = len(classes)  # plotly cannot select a heatmap's cells: a clear marker over each cell takes the click
    cell_px = 60 if n <= 12 else max(12, 720 // n)  # charts.confusion_matrix's cell height
    heat = fig.data[0]
    fig = go.Figure(fig).add_trace(go.Scatter(
        x=[c for _ in classes for c in classes], y=[r for r in classes for _ in classes], mode="markers",
        marker=dict(symbol="square", size=0.9 * cell_px, color="rgba(0,0,0,0)"), showlegend=False,
        text=[t for row in heat.text for t in row] if heat.text is not None else None,
        hovertemplate=heat.hovertemplate, selected=dict(marker=dict(opacity=1)),
        unselected=dict(marker=dict(opacity=1))))
    fig.update_traces(hoverinfo="skip", selector=dict(type="heatmap"))  # the markers say the same on hover
    on_click = functools.partial(_clicked, chart_key, key, tuple(classes), tuple(_cell_value(c) for c in cells))
    _charts.chart(fig, key=chart_key, on_select=on_click, selection_mode="points")


@st.cache_data(max_entries=32, show_spinner=False)
def _explained(folder: str, version: tuple, indices: tuple[int, ...], colormap: str, _model, _run, _preds):
    """Grad-CAM for the predicted and the true class of these validation images, once per run folder version,
    choice and colour map (a rerun, a page switch and back, another session: no second computation)."""
    from vislab.views import errors

    layer = _cached.cam_layer(_model, _run.config.get("model", ""))
    paths = [_preds.paths[i] for i in indices]
    with _cached.model_lock(_model):
        return errors.explain_pairs(_model, _run.data_config, paths, [int(_preds.predicted[i]) for i in indices],
                                    [int(_preds.labels[i]) for i in indices], layer, colormap=colormap), layer


def _image_name(path: str) -> str:
    p = Path(path)
    return f"{p.parent.name}/{p.name}"


def _show_images(folder: Path, version: tuple, model, run, preds, indices: list[int]) -> None:
    """Each image: the crop the model saw, Grad-CAM for the predicted class, Grad-CAM for the true class."""
    classes = run.classes
    colormap = "cividis" if st.session_state.get(PROJECTOR) else "jet"
    with st.spinner(f"Grad-CAM for {len(indices)} image{'s' if len(indices) != 1 else ''}, two classes each…"):
        shown, layer = _explained(str(folder), version, tuple(indices), colormap, model, run, preds)
    st.caption(f"Grad-CAM at `{layer}` on the square the model saw. A plain image: Grad-CAM found no positive "
               "evidence for that class there.")
    for i, ex in zip(indices, shown):
        k, y = ex.classes
        pk, py = float(preds.probs[i, k]), float(preds.probs[i, y])
        cols = st.columns(3)
        cols[0].image(ex.crop, caption=f"{_image_name(ex.path)} · true {classes[y]} · predicted {classes[k]}",
                      width="stretch")
        flat = [" (flat: no positive evidence)" if ex.flat(j) else "" for j in (0, 1)]
        if k == y:
            cols[1].image(ex.overlays[0], width="stretch",
                          caption=f"Grad-CAM for {classes[k]} (predicted = true) · p = {pk:.2f}{flat[0]}")
            continue
        cols[1].image(ex.overlays[0], width="stretch",
                      caption=f"Grad-CAM for predicted {classes[k]} · p = {pk:.2f}{flat[0]}")
        cols[2].image(ex.overlays[1], width="stretch",
                      caption=f"Grad-CAM for true {classes[y]} · p = {py:.2f}{flat[1]}")


def cell_section(folder: Path, version: tuple, model, run, preds, cells: list, key: str) -> None:
    """The "Show cell" box (set by a click on the matrix too) and the chosen cell's images."""
    from vislab.views import errors

    ss = st.session_state
    classes = run.classes
    by_value = {_cell_value(c): c for c in cells}
    box = _state.kept(f"{ERR_CELL_PREFIX}{key}")
    if ss.get(box) not in by_value:
        ss[box] = None
    empty = ss.pop(f"{ERR_EMPTY_PREFIX}{key}", None)
    st.subheader("Errors you can click")
    if not any(c.error for c in cells):
        st.success(f"No errors: the model got all {len(preds.labels)} validation images right, so every image "
                   "is on the diagonal. A cell below still opens its images.")
    pick = st.selectbox("Show cell (or click a cell of the confusion matrix)", list(by_value), key=box,
                        format_func=lambda v: _cell_label(by_value[v], classes), placeholder="Pick a cell",
                        help="Non-empty cells, errors first (the most images first), then the diagonal")
    if empty:
        st.info(empty)
    if pick is None:
        return
    cell = by_value[pick]
    hits = errors.in_cell(preds, cell.true, cell.predicted)
    shown = hits[:errors.MAX_IMAGES]
    more = f"; the {len(shown)} with the highest loss are shown" if len(hits) > len(shown) else ""
    st.markdown(f"**{len(hits)}** validation image{'s are' if len(hits) != 1 else ' is'} true "
                f"**{classes[cell.true]}** and predicted **{classes[cell.predicted]}**{more}.")
    _show_images(folder, version, model, run, preds, shown)


def top_loss_section(folder: Path, version: tuple, model, run, preds, top: list[int], key: str) -> None:
    """"Explain a top loss": one image of the top-loss grid with Grad-CAM for its predicted and true class."""
    ss = st.session_state
    classes = run.classes
    by_path = {preds.paths[i]: (n, i) for n, i in enumerate(top)}
    box = _state.kept(f"{ERR_LOSS_PREFIX}{key}")
    if ss.get(box) not in by_path:
        ss[box] = None

    def label(path: str) -> str:
        n, i = by_path[path]
        return (f"#{n + 1} · {_image_name(path)} · true {classes[preds.labels[i]]} → predicted "
                f"{classes[preds.predicted[i]]} · loss {preds.losses[i]:.2f}")

    pick = st.selectbox("Explain a top loss", list(by_path), key=box, format_func=label, placeholder="Pick an image",
                        help="Grad-CAM for the class the model picked and for the true class")
    if pick is not None:
        _show_images(folder, version, model, run, preds, [by_path[pick][1]])
