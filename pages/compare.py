from pathlib import Path

import numpy as np
import streamlit as st

from pages import _cached, _charts, _dataset, _jobs, _live, _route, _state
from vislab.views import cam, features, base as views
from vislab.training import compare, runs
from vislab.models import freezing
from vislab.serving import jobs
from vislab.figures import charts as plots
from vislab.data.config import DataConfig
from vislab.data.transforms import crop_seen, load_image
from vislab.training.tasks import CompareTask

_route.through_app()  # first: a page opened on its own (the first request after a restart) goes through app.py

# ---- this page's keys (kept: a person's settings, see _state.kept) ------------------------------------------
COMPARE_CONFIGS = "compare_configs"
COMPARE_CUSTOM = "compare_custom"
COMPARE_EPOCHS = "compare_epochs"
COMPARE_SIZE = "compare_size"
COMPARE_BATCH = "compare_batch"
COMPARE_STOP = "compare_stop"
COMPARE_RELOAD = "compare_reload"
COMPARE_ACTIVE = "_compare_active"  # the comparison the page is following (its end shows it)
CMP_CURVES = "cmp_curves"
CMP_CM_PREFIX = "cmp_cm_"
CMP_CAM = "cmp_cam"
CMP_LAYER = "cmp_layer"
CMP_MAPS = "cmp_maps"

_dataset.open_page()
ss = st.session_state
st.title("Compare strategies")
st.markdown("Queue several configurations on the **same data split and seed**, run them one after another, "
            "and read them off one screen: what does thawing one more stage, or BatchNorm in `eval`, change?")

ds: _dataset.Dataset | None = ss.get(_state.DATASET)
active = _jobs.active_job("compare")  # the lab's comparison in progress, read from disk
busy = _jobs.active_job()  # any job of this lab (one at a time per lab)
running = busy is not None
if ds is None or not ds.used.usable:
    st.info("Pick a dataset on the **Data** page first (the bundled sample works offline).")
else:
    default = [{"name": s, "strategy": s, "thaw_last": 2 if s == "partial" else 1, "bn": "default",
                "head": "linear", "lr": 1e-3} for s in ("head", "partial", "full", "scratch")]
    table = st.data_editor(default, num_rows="dynamic", key=COMPARE_CONFIGS, width="stretch", disabled=running,
                           column_config={
                               "strategy": st.column_config.SelectboxColumn(options=list(freezing.STRATEGIES)),
                               "bn": st.column_config.SelectboxColumn(options=["default", *freezing.BN_MODES]),
                               "head": st.column_config.SelectboxColumn(options=["linear", "mlp"]),
                               "thaw_last": st.column_config.NumberColumn(min_value=1, max_value=50, step=1),
                               "lr": st.column_config.NumberColumn(min_value=1e-6, max_value=1.0, format="%.0e")})
    custom = st.toggle("Also run the Freeze page's current plan (its stage toggles and BatchNorm modes)",
                       key=_state.kept(COMPARE_CUSTOM), disabled=running or _state.PLAN not in ss)
    c1, c2, c3 = st.columns(3)
    epochs = c1.number_input("Epochs per run", 1, 100, 3, disabled=running, key=_state.kept(COMPARE_EPOCHS))
    size = c2.select_slider("Image size", [64, 96, 128, 160, 192, 224], 224, disabled=running,
                            key=_state.kept(COMPARE_SIZE))
    batch = c3.select_slider("Batch size", [8, 16, 32, 64], 32, disabled=running, key=_state.kept(COMPARE_BATCH))
    st.caption(f"`{ss[_state.MODEL]}` on {ds.markdown} ({len(ds.used.items)} images), split seed {ds.seed}. Runs with "
               "the same frozen prefix share its cached features.")
    b1, b2, _ = st.columns([1, 1, 4])
    if b1.button("Run comparison", type="primary", disabled=running):
        configs = [compare.Config(str(r["name"]), r["strategy"], int(r["thaw_last"] or 1),
                                  None if r["bn"] in (None, "default") else r["bn"], r["head"] or "linear",
                                  float(r["lr"] or 1e-3)) for r in table if r.get("name") and r.get("strategy")]
        if custom:
            configs.append(compare.Config("my plan", "head", head=ss[_state.HEAD], lr=1e-3,
                                          plan=ss[_state.PLAN].to_dict()))
        if len({c.name for c in configs}) != len(configs) or not configs:
            st.error("Give every configuration its own name.")
        else:
            try:
                task = CompareTask(ss[_state.MODEL], ds.used, configs, int(epochs), img_size=int(size),
                                   batch_size=int(batch), seed=ds.seed)
                _jobs.submit(task, f"compare-{ss[_state.MODEL]}")
                st.rerun()
            except (jobs.JobError, ValueError) as exc:
                st.warning(str(exc))
    if b2.button("Stop", disabled=active is None, key=COMPARE_STOP):
        _jobs.stop(active)
    if busy is not None and active is None:
        st.caption("This lab's training job is running: a comparison can start when it ends.")


# ---- a saved comparison's views, cached on the run folders and their weights' mtimes (issue 22) ----------
# A revisit (this session or another, after any other page) recomputes nothing: the table is read once per
# comparison.json version; each run's Grad-CAM and feature maps once per (run folder, weights' mtime,
# images and their mtimes, data config, layer). A run's model is loaded only when one of them is missing.


def load_shown(folder: Path):
    """(model name, classes, rows without their models, folder) of a comparison of this lab."""
    if not _state.current_lab().inside(folder):
        raise FileNotFoundError("that comparison is not in this lab")
    name, classes, rows = _comparison(str(folder), (folder / "comparison.json").stat().st_mtime_ns)
    return name, classes, rows, folder


@st.cache_data(max_entries=16, show_spinner=False)
def _comparison(path: str, mtime_ns: int):
    return compare.load(path, models=False)


def run_version(run_dir: str | None) -> int | None:
    """mtime of a run's weights (its best checkpoint's when it did not finish), or None without any. Checked
    here, on every visit, that the run is in this session's lab: the cached views below are shared."""
    if not run_dir or not _state.current_lab().inside(run_dir):
        return None
    folder = Path(run_dir)
    for weights in (folder / "model.safetensors", folder / runs.CHECKPOINT / "model.safetensors"):
        try:
            return weights.stat().st_mtime_ns
        except OSError:
            continue
    return None


def validation_picks(run_dir: str, ds) -> list[tuple[str, int, int]]:
    """The first three validation images of the comparison's own split (path, label, file mtime)."""
    split = runs.load_split(run_dir)
    val = split[1] if split else (ds.split()[1] if ds is not None else [])
    picks = []
    for path, label in val[:3]:
        try:
            picks.append((str(path), int(label), Path(path).stat().st_mtime_ns))
        except OSError:
            continue
    return picks


def _model(run_dir: str):
    return _jobs.load_run(Path(run_dir))


@st.cache_data(max_entries=64, show_spinner="Reading the run…")
def run_facts(run_dir: str, version: int, model_name: str) -> dict:
    model, run = _model(run_dir)
    with _cached.model_lock(model):
        try:
            layer, why = cam.default_layer(model, model_name), ""
        except (cam.CamNotApplicable, ValueError, RuntimeError) as exc:
            layer, why = None, str(exc)
        return {"data_config": run.config["data_config"], "cam_layer": layer, "cam_why": why,
                "conv_layers": features.conv_layers(model)}


@st.cache_data(max_entries=64, show_spinner=False)
def seen_crops(picks: list, cfg_dict: dict) -> list[np.ndarray]:
    cfg = DataConfig.from_dict(cfg_dict)
    return [np.asarray(crop_seen(load_image(p), cfg)) for p, _, _ in picks]


@st.cache_data(max_entries=128, show_spinner=False)
def gradcam(run_dir: str, version: int, picks: list, cfg_dict: dict, layer: str) -> np.ndarray | str:
    """(B, H, W) Grad-CAM maps of one run for the picked images, or why there are none."""
    model, _ = _model(run_dir)
    x = views.batch([load_image(p) for p, _, _ in picks], DataConfig.from_dict(cfg_dict))
    try:
        with _cached.model_lock(model):
            return cam.run(model, x, ["GradCAM"], layer, [y for _, y, _ in picks])[0].maps
    except (cam.CamNotApplicable, ValueError, RuntimeError) as exc:
        return str(exc)


@st.cache_data(max_entries=128, show_spinner=False)
def feature_maps(run_dir: str, version: int, picks: list, cfg_dict: dict, layer: str) -> np.ndarray | str:
    """(C, H, W) maps of one run's `layer` for the first picked image, or why there are none."""
    model, _ = _model(run_dir)
    x = views.batch([load_image(p) for p, _, _ in picks[:1]], DataConfig.from_dict(cfg_dict))
    try:
        with _cached.model_lock(model):
            return features.activations(model, layer, x)[0].numpy()
    except (AttributeError, ValueError, RuntimeError) as exc:
        return str(exc)


# the figures too: built once per comparison / (runs and their versions, images, layer), not on every visit
@st.cache_data(max_entries=16, show_spinner=False)
def table_figures(path: str, mtime_ns: int):
    """The learning curves and each run's confusion matrix of a saved comparison."""
    _, classes, rows = _comparison(path, mtime_ns)
    curves = plots.compare_curves([(r.config.name, r.metrics) for r in rows])
    cms = [plots.confusion_matrix(np.asarray(r.confusion), classes).update_layout(title=f"{r.config.name}: confusion")
           for r in rows]
    return curves, cms


@st.cache_data(max_entries=32, show_spinner="Grad-CAM of each run…")
def cam_figure(shown: tuple, picks: list, cfg_dict: dict, layer: str, classes: list[str]):
    """(figure or None, errors): Grad-CAM of each shown (name, run folder, version) on the picked images.
    Each run's maps are cached on their own: a run whose weights changed is the only one recomputed."""
    crops = seen_crops(picks, cfg_dict)
    panels, errors = [], []
    for name, run_dir, version in shown:
        maps = gradcam(run_dir, version, picks, cfg_dict, layer)
        if isinstance(maps, str):
            errors.append(f"{name}: {maps}")
            continue
        panels += [(f"{name} · {classes[y]}", crops[b], maps[b]) for b, (_, y, _) in enumerate(picks)]
    fig = plots.cam_panels(panels, 0.5, "Jet", cols=len(picks), title=f"Grad-CAM at {layer}") if panels else None
    return fig, errors


@st.cache_data(max_entries=32, show_spinner="Feature maps of each run…")
def maps_figure(shown: tuple, picks: list, cfg_dict: dict, layer: str):
    """(figure or None, caption, errors): the same 6 channels of `layer` under each shown run."""
    maps, errors = [], []
    for name, run_dir, version in shown:
        m = feature_maps(run_dir, version, picks, cfg_dict, layer)
        if isinstance(m, str):
            errors.append(f"{name}: {m}")
        else:
            maps.append((name, m))
    if not maps:
        return None, "", errors
    top = features.top_channels(maps[0][1], 6)
    grid = np.stack([m[c] for _, m in maps for c in top])
    titles = [f"{n} · ch {c}" for n, _ in maps for c in top]
    fig = plots.map_grid(grid, titles, cols=6, title=f"{layer}: the same 6 channels under each run")
    base = maps[0][1]
    change = "Change of these maps against the first run: " + ", ".join(
        f"{n} {features.map_change(base, m):.3f}" for n, m in maps[1:])
    return fig, change, errors


def progress(job: jobs.Job | None) -> None:
    """Where the lab's comparison is: queued, or which of its runs is training (see _live.follow_job)."""
    if job is not None:
        _live.runs_progress(job, "run", ". It starts by itself.", len(job.payload().get("configs", [])))


def _show(job_id: str) -> None:
    ss[_state.COMPARE_SHOWN] = job_id  # the comparison just ended: show it


_live.follow_job("compare", progress, mark=COMPARE_ACTIVE, ended=_show)

st.divider()
saved = [j for j in _jobs.lab_jobs("compare") if (j.folder / "comparison.json").is_file()]
failed = [j for j in _jobs.lab_jobs("compare") if j.state == "error"]
if failed and failed[0].id == ss.get(_state.COMPARE_SHOWN):
    st.error(f"The comparison failed: {failed[0].status().get('message')}")
if saved:
    names = [j.id for j in saved]
    pick = st.selectbox("Saved comparisons of this lab", names, key=_state.kept(COMPARE_RELOAD),
                        index=names.index(ss[_state.COMPARE_SHOWN]) if ss.get(_state.COMPARE_SHOWN) in names else 0)
    if st.button("Show"):
        ss[_state.COMPARE_SHOWN] = pick
loaded = None
if ss.get(_state.COMPARE_SHOWN) and (_dataset.runs_folder() / ss[_state.COMPARE_SHOWN] / "comparison.json").is_file():
    try:
        loaded = load_shown(_dataset.runs_folder() / ss[_state.COMPARE_SHOWN])
    except (OSError, ValueError, KeyError) as exc:
        st.error(f"Cannot reload {ss[_state.COMPARE_SHOWN]}: {exc}")

if loaded:
    model_name, classes, rows, folder = loaded
    st.subheader(f"{len(rows)} runs of `{model_name}`")
    curves, cms = table_figures(str(folder), (folder / "comparison.json").stat().st_mtime_ns)
    _charts.chart(curves, key=CMP_CURVES)
    st.dataframe(compare.table(rows), hide_index=True, width="stretch")
    st.markdown(compare.noise_text(compare.noise(rows)))
    for p in compare.caching_passes(rows):
        st.markdown(f"**{p.describe()}**")
    st.caption("*train seconds*: each configuration's own training, without the caching pass it trained on. "
               "*kept val acc* is the kept weights' accuracy on the validation images, *± SE* its binomial "
               "standard error; *vs the best* compares each with the best on the same images.")
    st.download_button("Download the table (CSV)", compare.csv_text(rows), "comparison.csv", "text/csv")
    with st.expander("How each run's frozen prefix was run"):
        for line in dict.fromkeys(c for r in rows for c in r.cache):
            st.caption(line)
    cols = st.columns(min(len(rows), 4))
    for i, fig in enumerate(cms):
        with cols[i % len(cols)]:
            _charts.chart(fig, key=f"{CMP_CM_PREFIX}{i}")

    versions = {r.config.name: run_version(r.run_dir) for r in rows}
    runs_ok = [r for r in rows if versions[r.config.name] is not None]
    picks = validation_picks(runs_ok[0].run_dir, ds) if runs_ok else []
    if picks:
        st.subheader("The same validation images under each run")
        shown = tuple((r.config.name, r.run_dir, versions[r.config.name]) for r in runs_ok)
        facts = run_facts(shown[0][1], shown[0][2], model_name)
        if facts["cam_layer"] is None:
            st.info(f"No Grad-CAM for `{model_name}`: {facts['cam_why']}")
        else:
            fig, errors = cam_figure(shown, picks, facts["data_config"], facts["cam_layer"], classes)
            for line in errors:
                st.error(line)
            if fig is not None:
                _charts.chart(fig, key=CMP_CAM)
        layers = facts["conv_layers"]
        layer = st.selectbox("Feature maps of layer", layers, index=len(layers) // 2,
                             key=_state.kept(CMP_LAYER))
        fig, change, errors = maps_figure(shown, picks[:1], facts["data_config"], layer)
        for line in errors:
            st.error(line)
        if fig is not None:
            _charts.chart(fig, key=CMP_MAPS)
            st.caption(change)
