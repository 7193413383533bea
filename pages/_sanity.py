"""The CAM page's sanity check: does each map depend on what the model learned? The cascading randomisation
of views.sanity (Adebayo et al. 2018) on a copy of the model (the one in view is never touched): the head,
then each stage down to the stem, re-initialised in turn, and after each step the map again for the same
image and class, with its rank correlation and SSIM to the original, as a strip per method and image, and
the check's plain sentence.

On demand (a button), with progress per step and a Stop that keeps the methods already checked; kept with
the panels: the page drops CAM_SANITY whenever it drops CAM_OUT, as it does the scores.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from pages import _cached, _charts, _live
from vislab.data.transforms import crop_seen
from vislab.views import cam, sanity, base as views

CAM_SANITY = "cam_sanity"  # per (model, method): the check's steps [image][step] and its sentence
CAM_SANITY_STOP = "cam_sanity_stop"
BUTTON = "Sanity check: randomise the model layer by layer"
SANITY_PREFIX = "cam_sanity_"  # + an index: a strip's chart


STRIP_PANELS = 6  # panels of a strip, in one row: the original, the head, steps spread between, every layer


def strip_steps(n: int, most: int = STRIP_PANELS) -> list[int]:
    """Which of `n` steps a strip draws: all of a shallow model's; of a deep one's (MobileNetV2: 21) the
    original, the head alone, steps spread evenly between, and the last (every layer random)."""
    if n <= most:
        return list(range(n))
    inner = most - 3
    return sorted({0, 1, n - 1, *(round(1 + (n - 2) * (i + 1) / (inner + 1)) for i in range(inner))})


def _run(out: dict, vms: list, images: list) -> None:
    ss = st.session_state
    ss.pop(CAM_SANITY, None)
    progress, live = _live.stoppable(CAM_SANITY_STOP)  # Stop keeps what has finished
    by_label = {vm.label: vm for vm in vms}
    jobs = [(e, m) for e in out["maps"] if e["model"] in by_label for m in e["maps"]]  # each model's methods
    done: list[dict] = []
    for j, (entry, m) in enumerate(jobs):
        vm = by_label[entry["model"]]
        x = views.batch([img for _, img in images], vm.data_config)  # (B, 3, S, S): the crops the model saw

        def step(k, n, j=j, name=m["name"]):
            progress.progress((j + k / n) / len(jobs), text=f"{name} (method {j + 1} of {len(jobs)}): "
                                                            f"step {k + 1} of {n}")
        with _cached.model_lock(vm.model):  # the check deep-copies the model first, then leaves it alone
            steps = sanity.check(vm.model, x, m["method"], m["layer"], entry["classes"], on_progress=step)
        done.append({"model": vm.label, "name": m["name"], "steps": steps,
                     "sentence": sanity.sentence(steps, m["name"])})
        ss[CAM_SANITY] = {"checks": list(done), "total": len(jobs)}
    live.empty()


def _show(found: dict, vms: list, images: list, opacity: float, colourscale: str, several_models: bool) -> None:
    from vislab.figures import charts as plots

    if len(found["checks"]) < found["total"]:
        st.warning(f"Stopped: {len(found['checks'])} of {found['total']} methods checked.")
    cfgs = {vm.label: vm.data_config for vm in vms}
    n = 0
    for check in found["checks"]:
        st.markdown(f"**{check['name']}**" + (f" · {check['model']}" if several_models else ""))
        (st.warning if check["sentence"].startswith("Warning") else st.info)(check["sentence"])
        for b, steps in enumerate(check["steps"]):
            crop = np.asarray(crop_seen(images[b][1], cfgs[check["model"]]))
            titles = sanity.titles(steps)
            picked = strip_steps(len(steps))
            panels = [(titles[i].replace("\n", "<br>").replace(" · ", "<br>"), crop, steps[i].map)  # narrow:
                      for i in picked]  # one fact a line
            _charts.chart(plots.cam_panels(panels, opacity, colourscale, cols=len(panels), max_cols=STRIP_PANELS,
                                           title=images[b][0]), key=f"{SANITY_PREFIX}{n}")
            n += 1
            if len(picked) < len(steps):  # a deep model: one readable row, every step's numbers folded away
                with st.expander(f"Every step ({len(steps)}): the strip draws {len(picked)} of them"):
                    st.dataframe([{"step": s.step, "randomised": s.name, "rho": s.spearman, "SSIM": s.ssim}
                                  for s in steps], hide_index=True)


def section(out: dict, vms: list, images: list, opacity: float, colourscale: str) -> None:
    """Under the scores: the button, then the strips kept for these panels."""
    if not any(e["maps"] for e in out["maps"]):
        return
    st.subheader("Sanity check: does each map depend on what the model learned?")
    slow = sorted({m["method"] for e in out["maps"] for m in e["maps"] if m["method"] in cam.SLOW})
    st.caption("A copy of the model is randomised top first (the head, then each stage down to the stem), and "
               "each method's map is computed again after every step, for the same image and class. A map that "
               "stays like the original (rank correlation rho and SSIM near 1) with the learned weights gone "
               f"shows the image, not the model; below rho {sanity.THRESHOLD:g} it counts as unrelated. The model "
               "in view is not changed." + (f" {', '.join(slow)}: one forward pass per channel at every step, "
                                            "minutes per method." if slow else ""))
    if st.button(BUTTON):
        _run(out, vms, images)
    found = st.session_state.get(CAM_SANITY)
    if found:
        _show(found, vms, images, opacity, colourscale, len(out["maps"]) > 1)
