"""The CAM page's scores: can these maps be trusted? Deletion and insertion AUC of every map in view
(views.faithfulness), the same for a random map and a centred blob so a number means something, grad-cam's
ROAD where the panels have it (the page's ROAD toggle: the panels' own scores, and the baselines' through the
same `cam.road_score`), and a ranking of the methods that says plainly when it is noise (views.ranking).

On demand only: a map costs 2 × (steps + 1) forward passes (about 0.65 s for MobileNetV2 at 224 px on two
quiet CPU cores, several times that while a class trains), so scoring is a button, with progress and a Stop
between images (both gone once it is done). Every map is scored on the crop the model saw, at its input size, for the class its panel explains (the panels' own maps and targets,
kept in the page's CAM_OUT). The scores live beside the panels: the page drops CAM_SCORES whenever it drops
CAM_OUT (a new Compute, or a change of the inputs), so a page switch and back shows them again as they were.
"""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from pages import _cached, _live
from vislab.views import cam, faithfulness, ranking, base as views

CAM_SCORES = "cam_scores"  # the scores of the panels in CAM_OUT: {"rows", "done", "images", "road", "seconds"}
CAM_SCORE_STOP = "cam_score_stop"
BUTTON = "Score these maps"
BASELINES = {"random": ranking.RANDOM, "centre": ranking.BLOB}  # faithfulness's names -> the ranking's


def maps_of(vm, found, several_layers: bool) -> dict:
    """What scoring needs from one model's `cam.explain`, kept in CAM_OUT: each map (B, H, W) at the model's
    input size, named as the ranking shows it, with the panels' ROAD scores (None when not asked for), and
    the class each image's maps explain."""
    return {"model": vm.label, "classes": list(found.classes),
            "maps": [{"name": res.method + (f" · {res.layer}" if several_layers and res.method != "CAM" else ""),
                      "method": cam.CLASSIC if res.method == "CAM" else res.method, "layer": res.layer,
                      "maps": res.maps, "road": road} for res, road in zip(found.results, found.road)]}


def _row(model: str, method: str, image: str, target: str, s: faithfulness.Scores, road) -> dict:
    row = {"model": model, "method": method, "image": image, "class": target,
           "deletion AUC": round(s.deletion_auc, 4), "insertion AUC": round(s.insertion_auc, 4),
           "insertion − deletion": round(ranking.gap(s.deletion_auc, s.insertion_auc), 4)}
    if road is not None:
        row["ROAD"] = round(float(road), 4)
    return row


def _score_image(vm, entry: dict, b: int, images: list, step) -> list[dict]:
    """Every map of image `b`, then the two baselines, for the class its panels explain."""
    label, img = images[b]
    x = views.batch([img], vm.data_config)  # (1, 3, S, S): the crop the model saw, at its input size
    target = entry["classes"][b]
    name = vm.classes[target] if target < len(vm.classes) else str(target)
    road = any(m["road"] is not None for m in entry["maps"])
    rows = []
    with _cached.model_lock(vm.model):
        for m in entry["maps"]:
            step(m["name"])
            s = faithfulness.score(vm.model, x, m["maps"][b], target)
            rows.append(_row(vm.label, m["name"], label, name, s, None if m["road"] is None else m["road"][b]))
        for key, m in faithfulness.baselines(tuple(entry["maps"][0]["maps"][b].shape)).items():
            step(BASELINES[key])
            s = faithfulness.score(vm.model, x, m, target)
            rows.append(_row(vm.label, BASELINES[key], label, name, s,
                             cam.road_score(vm.model, x, m[None], [target])[0] if road else None))
    return rows


def _score(out: dict, vms: list, images: list) -> None:
    """Score every map of CAM_OUT, image by image; what is finished is kept after each image (Stop keeps it)."""
    ss = st.session_state
    ss.pop(CAM_SCORES, None)
    progress, live = _live.stoppable(CAM_SCORE_STOP)  # Stop keeps what has finished
    by_label = {vm.label: vm for vm in vms}
    entries = [e for e in out["maps"] if e["model"] in by_label and e["maps"]]
    kept = {"rows": [], "done": 0, "images": len(images) * len(entries), "seconds": 0.0,
            "road": any(m["road"] is not None for e in entries for m in e["maps"])}
    start = time.perf_counter()
    for entry in entries:
        n = len(entry["maps"]) + len(BASELINES)
        for b in range(len(images)):
            k = iter(range(1, n + 1))

            def step(method, b=b):
                i = next(k)
                progress.progress((kept["done"] + (i - 1) / n) / max(kept["images"], 1),
                                  text=f"image {b + 1} of {len(images)} · method {i} of {n}: {method}")
            rows = _score_image(by_label[entry["model"]], entry, b, images, step)
            kept.update(rows=kept["rows"] + rows, done=kept["done"] + 1, seconds=time.perf_counter() - start)
            ss[CAM_SCORES] = dict(kept)
    live.empty()


def _ranking(rows: list[dict]) -> ranking.Ranking:
    gaps: dict[str, dict[str, float]] = {}
    for r in rows:
        gaps.setdefault(r["method"], {})[r["image"]] = r["insertion − deletion"]
    return ranking.rank(gaps)


def _show(scores: dict, vms: list, several_models: bool) -> None:
    rows = scores["rows"]
    if scores["done"] < scores["images"]:
        st.warning(f"Stopped: scores for {scores['done']} of {scores['images']} images; the table and the ranking "
                   "cover only those.")
    if not rows:
        return
    st.caption(f"Scored {len(rows)} maps in {scores['seconds']:.1f} s.")
    table = pd.DataFrame(rows)
    if not several_models:
        table = table.drop(columns="model")
    st.dataframe(table, hide_index=True)
    for vm in vms:
        mine = [r for r in rows if r["model"] == vm.label]
        if not mine:
            continue
        if several_models:
            st.markdown(f"**{vm.label}**")
        found = _ranking(mine)
        st.dataframe(pd.DataFrame([{"rank": i + 1, "method": s.name, "kind": "baseline" if s.baseline else "method",
                                    "mean": round(s.mean, 4), "std": round(s.std, 4), "min": round(s.low, 4),
                                    "max": round(s.high, 4), "images": s.images}
                                   for i, s in enumerate(found.standings)]), hide_index=True)
        for i, sentence in enumerate(found.sentences):
            (st.info if i == 0 else st.warning)(sentence)


def section(out: dict, vms: list, images: list) -> None:
    """Under the panels: the button, then the scores kept for these panels."""
    if not any(e["maps"] for e in out["maps"]):
        return  # no method ran: nothing to score
    st.subheader("Can these maps be trusted? Faithfulness scores")
    size = vms[0].data_config.size
    road = any(m["road"] is not None for e in out["maps"] for m in e["maps"])
    n_maps = sum((len(e["maps"]) + len(BASELINES)) * len(images) for e in out["maps"] if e["maps"])
    st.caption(f"**Deletion**: the pixels are replaced by the fill, a blurred copy of the image (Gaussian, sigma "
               f"= an eighth of the side), most important first in the map's order, in {faithfulness.STEPS} steps; "
               "the area under the class's probability curve is low for a faithful map. **Insertion**: from the "
               "blurred image the pixels are put back in the same order; high is faithful. Scored on the crop the "
               f"model saw ({size} × {size} px), for the class each panel explains, beside a random map and a "
               "centred blob. The ranking uses insertion − deletion; two methods are within noise when their mean "
               "difference per image is smaller than its spread (standard deviation over the images)."
               + (" ROAD: grad-cam's remove-and-debias score (higher is more faithful)." if road else ""))
    st.caption(f"{n_maps} maps to score (the methods' and the two baselines' for each image), each 2 × "
               f"{faithfulness.STEPS + 1} forward passes of the model.")
    if st.button(BUTTON):
        _score(out, vms, images)
    scores = st.session_state.get(CAM_SCORES)
    if scores:
        _show(scores, vms, len(out["maps"]) > 1)
