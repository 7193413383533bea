import numpy as np
import streamlit as st

from pages import _cached, _dataset, _jobs, _state
from vislab import cam, compare, data, features, freezing, jobs, plots, views
from vislab.transforms import crop_seen, load_image

_dataset.init_state()
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
    table = st.data_editor(default, num_rows="dynamic", key=_state.COMPARE_CONFIGS, width="stretch", disabled=running,
                           column_config={
                               "strategy": st.column_config.SelectboxColumn(options=list(freezing.STRATEGIES)),
                               "bn": st.column_config.SelectboxColumn(options=["default", *freezing.BN_MODES]),
                               "head": st.column_config.SelectboxColumn(options=["linear", "mlp"]),
                               "thaw_last": st.column_config.NumberColumn(min_value=1, max_value=50, step=1),
                               "lr": st.column_config.NumberColumn(min_value=1e-6, max_value=1.0, format="%.0e")})
    custom = st.toggle("Also run the Freeze page's current plan (its stage toggles and BatchNorm modes)",
                       key=_state.COMPARE_CUSTOM, disabled=running or _state.PLAN not in ss)
    c1, c2, c3 = st.columns(3)
    epochs = c1.number_input("Epochs per run", 1, 100, 3, disabled=running, key=_state.COMPARE_EPOCHS)
    size = c2.select_slider("Image size", [64, 96, 128, 160, 192, 224], 224, disabled=running, key=_state.COMPARE_SIZE)
    batch = c3.select_slider("Batch size", [8, 16, 32, 64], 32, disabled=running, key=_state.COMPARE_BATCH)
    st.caption(f"`{ss[_state.MODEL]}` on {ds.label} ({len(ds.used.items)} images), split seed {ds.seed}. Runs with "
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
            from dataclasses import asdict

            try:
                _jobs.submit("compare", f"compare-{ss[_state.MODEL]}", {
                    "model": ss[_state.MODEL], "report": data.report_to_dict(ds.used),
                    "configs": [asdict(c) for c in configs], "epochs": int(epochs), "img_size": int(size),
                    "batch_size": int(batch), "seed": ds.seed})
                st.rerun()
            except (jobs.JobError, ValueError) as exc:
                st.warning(str(exc))
    if b2.button("Stop", disabled=active is None, key=_state.COMPARE_STOP):
        _jobs.stop(active)
    if busy is not None and active is None:
        st.caption("This lab's training job is running: a comparison can start when it ends.")


@st.fragment(run_every=1.0 if active is not None else None)
def progress():
    job = _jobs.active_job("compare")
    if job is None:
        if ss.get(_state.COMPARE_ACTIVE):  # it just ended: show it
            ss[_state.COMPARE_SHOWN] = ss.pop(_state.COMPARE_ACTIVE)
            st.rerun(scope="app")
        return
    ss[_state.COMPARE_ACTIVE] = job.id
    if job.state == "queued":
        n = _jobs.ahead(job)
        st.info(f"**Queued: {n} job{'s' if n != 1 else ''} ahead of you.** It starts by itself.")
        return
    p = job.progress()
    total = max(p.get("runs", len(job.spec().get("configs", [])) or 1), 1)
    st.progress(min(p.get("runs_done", 0) / total, 1.0),
                text=f"run {min(p.get('runs_done', 0) + 1, total)} of {total}: {p.get('run', '')}")
    _, text = _jobs.progress_text(job)
    st.caption(text)


progress()

st.divider()
saved = [j for j in _jobs.lab_jobs("compare") if (j.folder / "comparison.json").is_file()]
failed = [j for j in _jobs.lab_jobs("compare") if j.state == "error"]
if failed and failed[0].id == ss.get(_state.COMPARE_SHOWN):
    st.error(f"The comparison failed: {failed[0].status().get('message')}")
if saved:
    names = [j.id for j in saved]
    pick = st.selectbox("Saved comparisons of this lab", names, key=_state.COMPARE_RELOAD,
                        index=names.index(ss[_state.COMPARE_SHOWN]) if ss.get(_state.COMPARE_SHOWN) in names else 0)
    if st.button("Show"):
        ss[_state.COMPARE_SHOWN] = pick
loaded = None
if ss.get(_state.COMPARE_SHOWN) and (_dataset.session_runs() / ss[_state.COMPARE_SHOWN] / "comparison.json").is_file():
    try:
        loaded = _jobs.load_comparison(_dataset.session_runs() / ss[_state.COMPARE_SHOWN])
    except (OSError, ValueError, KeyError) as exc:
        st.error(f"Cannot reload {ss[_state.COMPARE_SHOWN]}: {exc}")

if loaded:
    model_name, classes, rows, folder = loaded
    st.subheader(f"{len(rows)} runs of `{model_name}`")
    _state.chart(plots.compare_curves([(r.config.name, r.metrics) for r in rows]), key=_state.CMP_CURVES)
    summary = [r.summary() for r in rows]
    st.dataframe(summary, hide_index=True, width="stretch")
    csv_file = folder / "comparison.csv"  # written by vislab.compare.save
    if csv_file.is_file():
        st.download_button("Download the table (CSV)", csv_file.read_bytes(), "comparison.csv", "text/csv")
    for line in {c for r in rows for c in r.cache}:
        st.caption(line)
    cols = st.columns(min(len(rows), 4))
    for i, r in enumerate(rows):
        with cols[i % len(cols)]:
            _state.chart(plots.confusion_matrix(np.asarray(r.confusion), classes).update_layout(
                title=f"{r.config.name}: confusion"), key=f"{_state.CMP_CM_PREFIX}{i}")

    models_ok = [r for r in rows if r.model is not None]
    if ds is not None and models_ok:
        st.subheader("The same validation images under each run")
        _, val = ds.split()
        picks = val[: min(3, len(val))]
        working = ss.get(_state.WORKING)
        cfg = working[2].data_config.with_size(ss.get(_state.COMPARE_SIZE)) if working else None
        if cfg is not None:
            images = [(p, load_image(p)) for p, _ in picks]
            x = views.batch([img for _, img in images], cfg)  # (B, 3, H, W)
            crops = [np.asarray(crop_seen(img, cfg)) for _, img in images]
            layer = _cached.cam_layer(models_ok[0].model, model_name)
            panels = []
            for r in models_ok:  # cached per run: changing the layer below does not redo these
                try:
                    res = _cached.cached_view("compare_cam", r.model, images, (layer, tuple(cfg.input_size)),
                                              lambda r=r: cam.run(r.model, x, ["GradCAM"], layer,
                                                               [y for _, y in picks])[0])
                except (cam.CamNotApplicable, ValueError, RuntimeError) as exc:
                    st.error(f"{r.config.name}: {exc}")
                    continue
                panels += [(f"{r.config.name} · {classes[y]}", crops[b], res.maps[b]) for b, (_, y) in enumerate(picks)]
            if panels:
                _state.chart(plots.cam_panels(panels, 0.5, "Jet", cols=len(picks), title=f"Grad-CAM at {layer}"),
                             key=_state.CMP_CAM)
            layers = features.conv_layers(models_ok[0].model)
            layer = st.selectbox("Feature maps of layer", layers, index=len(layers) // 2, key=_state.CMP_LAYER)
            maps = [(r.config.name, _cached.cached_view("compare_maps", r.model, images[:1], (layer,),
                                                        lambda r=r: features.activations(r.model, layer, x[:1])[0]))
                    for r in models_ok]
            top = features.top_channels(maps[0][1], 6)
            grid = np.stack([m[c].numpy() for _, m in maps for c in top])
            titles = [f"{n} · ch {c}" for n, _ in maps for c in top]
            _state.chart(plots.map_grid(grid, titles, cols=6, title=f"{layer}: the same 6 channels under each run"),
                         key=_state.CMP_MAPS)
            base = maps[0][1]
            st.caption("Change of these maps against the first run: " + ", ".join(
                f"{n} {features.map_change(base, m):.3f}" for n, m in maps[1:]))
