"""Errors you can click (issue 26, item 3): a confusion-matrix cell (by the "Show cell" box or a click on the
matrix) and a top-loss image open those validation images with the model's confidence and Grad-CAM for the
predicted and the true class; the choice stays set across pages and is cleared by another run."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.proto.WidgetStates_pb2 import WidgetState
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import UnknownElement, Widget

from tests.test_app import _zip_of as _zip
from tests.test_walk import APP, _train, _use_model, _use_zip

CELL, LOSS = "errors_cell_job", "errors_loss_job"


def _app() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=180).run()


def _folder(at, run: str | None = None) -> Path:
    from vislab.serving import labs

    return labs.Lab(at.session_state["lab_id"]).runs_dir / (run or at.session_state["last_run"])


def _truth(folder: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """predictions.json read here, not through the library: (paths, true, predicted, probabilities)."""
    d = json.loads((folder / "predictions.json").read_text())
    probs = np.asarray(d["probs"], dtype=float)
    return d["paths"], np.asarray(d["labels"]), probs.argmax(1), probs


def _name(path: str) -> str:
    return f"{Path(path).parent.name}/{Path(path).name}"


def _rows(at) -> list[list[tuple[str, str]]]:
    """The opened images as the page shows them: per image, (caption, url) of its crop and of its overlays."""
    shown = [(c, u) for el in at.main.get("image") for c, u in zip(el.captions, el.value) if c]
    rows: list[list[tuple[str, str]]] = []
    for c, u in shown:
        if c.startswith("Grad-CAM for "):
            assert rows, shown
            rows[-1].append((c, u))
        else:
            rows.append([(c, u)])
    return rows


def _classes(folder: Path) -> list[str]:
    return json.loads((folder / "classes.json").read_text())


def _check_rows(rows, folder, true: int, pred: int, expected_paths: list[str]) -> None:
    """Each row: '<file> · true A · predicted B', then Grad-CAM for predicted B and for true A with their p."""
    paths, _, _, probs = _truth(folder)
    classes = _classes(folder)
    by_name = {_name(p): i for i, p in enumerate(paths)}
    assert sorted(r[0][0].split(" · ")[0] for r in rows) == sorted(_name(p) for p in expected_paths), rows
    for row in rows:
        (crop, crop_url), *overlays = row
        i = by_name[crop.split(" · ")[0]]
        assert crop.endswith(f" · true {classes[true]} · predicted {classes[pred]}"), row
        if true == pred:  # a diagonal cell: one map, the class is both
            assert len(overlays) == 1 and re.fullmatch(
                rf"Grad-CAM for {classes[pred]} \(predicted = true\) · p = {probs[i, pred]:.2f}( \(flat.*\))?",
                overlays[0][0]), row
            continue
        assert len(overlays) == 2, row  # the crop and two overlays
        assert re.fullmatch(rf"Grad-CAM for predicted {classes[pred]} · p = {probs[i, pred]:.2f}( \(flat.*\))?",
                            overlays[0][0]), row
        assert re.fullmatch(rf"Grad-CAM for true {classes[true]} · p = {probs[i, true]:.2f}( \(flat.*\))?",
                            overlays[1][0]), row
        for caption, url in overlays:  # a map drawn over the crop (the crop itself only where the map is flat)
            assert (url == crop_url) == caption.endswith("(flat: no positive evidence)"), row


@pytest.fixture
def trained(synthetic):
    at = _app()
    _use_model(at, "test_resnet")
    _use_zip(at, _zip(synthetic))
    _train(at)
    assert not at.exception, at.exception
    return at


def _error_cells(folder: Path) -> dict[tuple[int, int], list[str]]:
    paths, true, pred, _ = _truth(folder)
    cells: dict[tuple[int, int], list[str]] = {}
    for p, y, k in zip(paths, true, pred):
        cells.setdefault((int(y), int(k)), []).append(p)
    return cells


def test_a_cell_opens_exactly_its_images_with_both_maps_and_stays_open(trained):
    at = trained
    folder = _folder(at)
    cells = _error_cells(folder)
    box = at.selectbox(key=CELL)
    assert box.value is None and not _rows(at)
    # the box lists every non-empty cell with its count, errors first
    classes = _classes(folder)
    assert sorted(box.options) == sorted(
        f"true {classes[y]} → predicted {classes[k]} · {len(v)} image{'s' if len(v) != 1 else ''}"
        for (y, k), v in cells.items())
    errs = [c for c in cells if c[0] != c[1]]
    assert errs, "the 1-epoch run made no error: the test needs one"
    assert all(o.split(" → ")[0][5:] != o.split("predicted ")[1].split(" · ")[0]
               for o in box.options[:len(errs)])
    (y, k) = max(errs, key=lambda c: len(cells[c]))
    box.set_value(f"{y}:{k}").run()
    assert not at.exception, at.exception
    _check_rows(_rows(at), folder, y, k, cells[(y, k)][:12])
    n = len(cells[(y, k)])
    assert any(m.value.startswith(f"**{n}** validation image") and f"true **{classes[y]}** and predicted "
               f"**{classes[k]}**" in m.value for m in at.markdown)
    # a page switch and back: still open
    at.switch_page("pages/model.py").run()
    at.switch_page("pages/train.py").run()
    assert at.selectbox(key=CELL).value == f"{y}:{k}"
    _check_rows(_rows(at), folder, y, k, cells[(y, k)][:12])


def _click(at, chart_key: str, x: str, y: str) -> None:
    """What the browser sends when a person clicks a heatmap cell: the chart's selection with that point."""
    chart = next(e for e in at.main.get("plotly_chart") if e.key == chart_key)
    ws = WidgetState(id=chart.proto.id, string_value=json.dumps({"selection": {
        "points": [{"curve_number": 0, "x": x, "y": y}], "point_indices": [0], "box": [], "lasso": []}}))
    chart.__class__ = type("Clicked", (UnknownElement, Widget), {
        "_widget_state": property(lambda self: ws), "id": property(lambda self: self.proto.id)})
    at.run()
    assert not at.exception, at.exception


def test_a_click_on_a_cell_sets_the_box_and_a_top_loss_opens_with_both_maps(trained):
    at = trained
    folder = _folder(at)
    cells = _error_cells(folder)
    classes = _classes(folder)
    (y, k) = next(c for c in cells if c[0] != c[1])
    _click(at, "cm_job", classes[k], classes[y])  # x: predicted, y: true
    assert at.selectbox(key=CELL).value == f"{y}:{k}"
    _check_rows(_rows(at), folder, y, k, cells[(y, k)][:12])
    empty = next(((a, b) for a in range(len(classes)) for b in range(len(classes)) if (a, b) not in cells), None)
    if empty is not None:  # a click on an empty cell says so and opens nothing
        _click(at, "cm_job", classes[empty[1]], classes[empty[0]])
        assert any(f"No validation image is true {classes[empty[0]]} and predicted {classes[empty[1]]}" in i.value
                   for i in at.info)
    # the top-loss box: the grid's images, highest loss first; one opens with its two maps
    paths, true, pred, probs = _truth(folder)
    losses = np.asarray(json.loads((folder / "predictions.json").read_text())["losses"])
    order = [paths[i] for i in np.argsort(-losses, kind="stable")[:12]]
    box = at.selectbox(key=LOSS)
    assert [o.split(" · ")[1] for o in box.options] == [_name(p) for p in order]
    first = paths.index(order[0])
    assert true[first] != pred[first]
    before = len(_rows(at))  # the cell's images stay open above it
    box.set_value(order[0]).run()
    assert len(_rows(at)) == before + 1
    _check_rows(_rows(at)[-1:], folder, int(true[first]), int(pred[first]), [order[0]])


def test_another_run_clears_the_choice_and_a_reopened_run_of_another_model_opens_cells(trained):
    from pages import _jobs

    at = trained
    first = at.session_state["last_run"]
    _use_model(at, "test_efficientnet")
    deadline = time.time() + 60  # the queue notices the first worker has ended
    while _jobs.queue().running_count() and time.time() < deadline:
        time.sleep(0.2)
    _train(at)
    second = at.session_state["last_run"]
    assert second != first
    one, two = _error_cells(_folder(at, first)), _error_cells(_folder(at, second))
    common = sorted(set(one) & set(two))  # a cell both runs have: only the change of run can clear it
    assert common, (one.keys(), two.keys())
    y, k = common[0]

    def reopen(run: str) -> None:
        at.selectbox(key="reopen_pick").set_value(run).run()
        next(b for b in at.button if b.label == "Reopen").click().run()
        assert not at.exception, at.exception

    reopen(first)  # test_resnet, while the lab uses test_efficientnet
    at.selectbox(key="errors_cell_reopened").set_value(f"{y}:{k}").run()
    assert not at.exception, at.exception
    _check_rows(_rows(at), _folder(at, first), y, k, one[(y, k)][:12])
    reopen(second)  # another run under the same results: nothing opened
    assert at.selectbox(key="errors_cell_reopened").value is None and not _rows(at)
    at.selectbox(key="errors_cell_reopened").set_value(f"{y}:{k}").run()
    _check_rows(_rows(at), _folder(at, second), y, k, two[(y, k)][:12])
    reopen(first)
    assert at.selectbox(key="errors_cell_reopened").value is None and not _rows(at)


def test_a_run_with_no_errors_says_so(trained):
    at = trained
    folder = _folder(at)
    d = json.loads((folder / "predictions.json").read_text())
    k = len(d["probs"][0])
    d["probs"] = [[0.9 if j == y else 0.1 / (k - 1) for j in range(k)] for y in d["labels"]]
    (folder / "predictions.json").write_text(json.dumps(d))
    at.run()
    assert not at.exception, at.exception
    n = len(d["labels"])
    assert any(s.value.startswith(f"No errors: the model got all {n} validation images right") for s in at.success)
    assert all(" → predicted " in o for o in at.selectbox(key=CELL).options)
    classes = _classes(folder)
    assert all(o.split("true ")[1].split(" →")[0] == o.split("predicted ")[1].split(" ·")[0]
               for o in at.selectbox(key=CELL).options), classes
