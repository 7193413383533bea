import dataclasses

import streamlit as st
from PIL import Image, UnidentifiedImageError

from pages import _dataset, _images, _jobs, _runs, _state, _working
from vislab import data, evaluation, freezing, jobs, plots, runs, training
from vislab.transforms import Augment, load_image, to_rgb

_dataset.init_state()
ss = st.session_state
st.title("Train")

ds: _dataset.Dataset | None = ss.get(_state.DATASET)
model, info = _working.working()
active = _jobs.active_job("train")  # the lab's queued or running job, read from disk: any tab sees it
running = active is not None
active_spec = (active.spec().get("spec") or {}).get("train", {}) if active else {}


def render_results(metrics, classes, predictions, cfg, trained_model, run_dir, key):
    """Curves, confusion matrix, per-class accuracy, top losses and classify-an-image for a finished run."""
    _state.chart(plots.curves(metrics), key=f"{_state.CURVES_PREFIX}{key}")
    if predictions is None or not len(predictions.labels):
        st.info("No validation images to evaluate for this run.")
        return
    cm = evaluation.confusion(predictions, len(classes))
    left, right = st.columns(2)
    with left:
        _state.chart(plots.confusion_matrix(cm, classes), key=f"{_state.CM_PREFIX}{key}")
    with right:
        _state.chart(plots.per_class_accuracy(evaluation.per_class_accuracy(cm), classes),
                     key=f"{_state.PC_PREFIX}{key}")
    st.subheader("Top losses: the validation images it got most wrong")
    worst = evaluation.top_losses(predictions, 12)
    imgs, caps, colours = [], [], []
    for i in worst:
        p, y, k = predictions.paths[i], predictions.labels[i], predictions.predicted[i]
        imgs.append(load_image(p))
        caps.append(f"true: {classes[y]}\npred: {classes[k]} (p={predictions.probs[i, k]:.2f})\n"
                    f"loss {predictions.losses[i]:.2f}")
        colours.append("#B00020" if k != y else "#006400")
    grid = plots.image_grid(imgs, caps, cols=6, cell=170, colours=colours)
    st.image(grid, width="stretch")
    _images.download_png(lambda: grid, f"top_losses_{key}.png", "Download top losses (PNG)")
    st.subheader("Classify a new image")
    up = st.file_uploader("An image", type=["jpg", "jpeg", "png", "bmp", "webp", "gif", "tif", "tiff"],
                          key=f"{_state.CLASSIFY_PREFIX}{key}")
    if up is not None:
        try:
            img = to_rgb(Image.open(up))
        except (UnidentifiedImageError, OSError) as exc:
            st.error(f"Cannot read this file as an image: {exc}")
        else:
            c1, c2 = st.columns([1, 2])
            c1.image(img, caption=up.name, width="stretch")
            with c2:
                _state.chart(plots.topk(evaluation.classify(trained_model, img, cfg, classes, k=min(5, len(classes)))),
                             key=f"{_state.TOPK_PREFIX}{key}")
    if run_dir:
        st.caption(f"Run folder: `{run_dir}`")


def _start(default_size: int) -> None:
    """Start's callback: queues the job from the widgets' values before the page runs again, so the one rerun
    a click costs already shows Start disabled and the live progress (a class pressing Start together is the
    server's busiest moment: no second full rerun per user)."""
    ds: _dataset.Dataset | None = ss.get(_state.DATASET)
    if ds is None or not ds.used.usable:  # gone since the page was drawn (New lab in another tab)
        ss[_state.TRAIN_START_REFUSED] = "Pick a dataset on the Data page first: nothing was queued."
        return
    if ss[_state.STRATEGY] == "two-phase" and int(ss[_state.TRAIN_EPOCHS]) < 2:  # a click racing the epochs box
        ss[_state.TRAIN_START_REFUSED] = "Two-phase needs at least 2 epochs: nothing was queued."
        return
    size = ss.get(f"{_state.TRAIN_SIZE_PREFIX}{default_size}", default_size)
    decay = float(ss.get(_state.TRAIN_LAYER_DECAY, 1.0))
    device = ss.get(_state.TRAIN_DEVICE, "auto")
    spec = _working.session_spec()
    spec = dataclasses.replace(
        spec, img_size=size if size != default_size else None, augment=ss.get(_state.AUGMENT) or Augment(),
        train=dataclasses.replace(spec.train, epochs=int(ss[_state.TRAIN_EPOCHS]), lr=float(ss[_state.TRAIN_LR]),
                                  batch_size=int(ss[_state.TRAIN_BATCH]), device=device,
                                  phase2_lr_factor=float(ss.get(_state.TRAIN_FACTOR, 0.1)),
                                  layer_decay=None if decay == 1.0 else decay))
    plan = ss[_state.PLAN]
    try:
        _jobs.submit("train", f"{spec.model}_{ss[_state.STRATEGY]}", {
            "spec": spec.to_dict(), "report": data.report_to_dict(ds.used),
            "plan": plan if isinstance(plan, dict) else plan.to_dict()},  # the session's plan is the truth
            device=device)
    except jobs.JobError as exc:
        ss[_state.TRAIN_START_REFUSED] = str(exc)


if ds is None or not ds.used.usable:
    ss.pop(_state.TRAIN_START_REFUSED, None)  # what the info below says already
    st.info("Pick a dataset on the **Data** page first (the bundled sample works offline).")
else:
    default_size = info.data_config.size
    c = st.columns(6)
    # while this lab's job runs, the (disabled) boxes show what it runs with; after it, they keep those values
    ss.setdefault(_state.TRAIN_EPOCHS, 3)
    ss.setdefault(_state.TRAIN_BATCH, 32)
    if running:
        ss[_state.TRAIN_EPOCHS] = int(active_spec.get("epochs", ss[_state.TRAIN_EPOCHS]))
        ss[_state.TRAIN_BATCH] = int(active_spec.get("batch_size", ss[_state.TRAIN_BATCH]))
    epochs = c[0].number_input("Epochs", 1, 200, disabled=running, key=_state.TRAIN_EPOCHS)
    if _state.TRAIN_LR_NEXT in ss:  # "use the suggestion" from the LR finder below, applied before the widget exists
        ss[_state.TRAIN_LR] = ss.pop(_state.TRAIN_LR_NEXT)
    c[1].number_input("Learning rate", 1e-7, 1.0, 1e-3, format="%.1e", disabled=running, key=_state.TRAIN_LR)
    batch = c[2].select_slider("Batch size", [4, 8, 16, 32, 64, 128], disabled=running, key=_state.TRAIN_BATCH)
    size = c[3].select_slider("Image size", sorted({64, 96, 128, 160, 192, 224, 256, default_size}),
                              default_size, disabled=running, key=f"{_state.TRAIN_SIZE_PREFIX}{default_size}")
    found = training.devices_found()
    c[4].selectbox("Device", ["auto", "cpu"] + (["cuda"] if any(f.startswith("cuda") for f in found) else []),
                   disabled=running, help="Found here: " + ", ".join(found), key=_state.TRAIN_DEVICE)
    c[5].select_slider("Phase-2 LR factor", [0.5, 0.2, 0.1], 0.1, disabled=running, key=_state.TRAIN_FACTOR,
                       help="two-phase: the second phase trains everything at lr × this")
    st.select_slider("Per-stage LR decay (1 = the same rate everywhere)", [1.0, 0.9, 0.8, 0.7, 0.5], 1.0,
                     disabled=running, key=_state.TRAIN_LAYER_DECAY,
                     help="The head trains at the learning rate; each stage toward the stem at this "
                          "factor times the rate of the stage after it")
    rep = freezing.report(model)
    strategy = ss[_state.STRATEGY]
    st.caption(f"`{info.name}` · strategy **{strategy}** · {rep.trainable_params:,} trainable of {rep.total:,} "
               f"parameters · {len(ds.used.items)} images ({ds.label}) · devices found: {', '.join(found)} · "
               f"weights: {_working.weights_badge(info.weights)}")
    if strategy == "two-phase" and epochs < 2:
        st.warning("Two-phase needs at least 2 epochs.")
    b1, b2, _ = st.columns([1, 1, 4])
    start_help = "This lab already has a job; it must end (or be stopped) first." if running else None
    b1.button("Start training", type="primary", disabled=running or (strategy == "two-phase" and epochs < 2),
              help=start_help, on_click=_start, args=(default_size,))
    refused = ss.pop(_state.TRAIN_START_REFUSED, None)
    if refused:  # a second tab or a double click: the lab's job is already there
        st.warning(refused)
    stop_label = "Cancel" if active is not None and active.state == "queued" else "Stop"
    if b2.button(stop_label, disabled=not running, key=_state.TRAIN_STOP):
        _jobs.stop(active)
        st.toast("Stopping after this batch…" if stop_label == "Stop" else "Cancelled.")
    with st.expander("Learning-rate finder"):
        st.caption("Raises the learning rate exponentially over ~100 batches of the current plan and records the "
                   "loss; a good rate sits where the loss falls fastest. The model is left as it was.")
        if st.button("Find a learning rate", disabled=running):
            try:
                ss[_state.LR_SWEEP] = _working.find_lr(ds, size, int(batch))
            except ValueError as exc:  # a size this model cannot take
                st.error(str(exc))
        sweep = ss.get(_state.LR_SWEEP)
        if sweep is not None:
            _state.chart(plots.lr_sweep(sweep.lrs, sweep.losses, sweep.suggestion), key=_state.LR_SWEEP_CHART)
            st.caption(sweep.cached)
            if st.button(f"Use {sweep.suggestion:.1e}", disabled=running):
                ss[_state.TRAIN_LR_NEXT] = float(sweep.suggestion)
                st.rerun()


queued = running and active.state == "queued"


@st.fragment(run_every=None if not running else _jobs.POLL_QUEUED_S if queued else _jobs.POLL_RUNNING_S)
def live():
    """Progress of the lab's job, polled from its files (only this fragment reruns): once a second while it
    runs, every few seconds while it waits in the queue (a class of queued pages must not slow the job)."""
    job = _jobs.active_job("train")
    if job is not None and queued and job.state != "queued":
        st.rerun(scope="app")  # it started: redraw the page, polling at the running rate
    if job is None:
        if ss.get(_state.SHOWN_ACTIVE):  # it just ended: redraw the whole page once, with the results
            ss.pop(_state.SHOWN_ACTIVE)
            st.rerun(scope="app")
        return
    ss[_state.SHOWN_ACTIVE] = job.id
    if job.state == "queued":
        n = _jobs.ahead(job)
        st.info(f"**Queued: {n} job{'s' if n != 1 else ''} ahead of you** (the server trains "
                f"{jobs.max_jobs()} at a time per device, in order). It starts by itself; Cancel takes it out.")
        return
    done, text = _jobs.progress_text(job)
    st.progress(done, text=text)
    if job.stop_requested:
        st.caption("Stopping after this batch…")
    for line in job.cache_lines():
        st.caption(line)
    metrics = job.metrics()
    if metrics:
        _state.chart(plots.curves(metrics), key=_state.LIVE_CURVES)
    else:
        st.caption("Curves appear after the first epoch.")


live()

current = _jobs.lab_jobs("train")
shown = next((j for j in current if j.id == ss.get(_state.LAST_RUN)), None) if ss.get(_state.LAST_RUN) else None
if shown is not None and not shown.active:
    status = shown.status()
    state = status.get("state")
    if state == "error":
        st.error(f"Training failed: {status.get('message')}")
    elif state == "cancelled":
        st.info(f"The last job was cancelled ({status.get('message', '')}).")
    else:
        metrics = shown.metrics()
        line = _jobs.totals(shown)
        try:
            trained, run = _jobs.load_run(shown.folder)
        except (FileNotFoundError, RuntimeError, ValueError, KeyError, OSError) as exc:
            trained, run = None, None
            line += f" (no weights to show: {exc})"
        word = {"done": "Done", "stopped": "Stopped", "interrupted": "Interrupted"}.get(state, state)
        msg = f"{word}: {line}"
        if run is not None and run.metrics:
            best = max(run.metrics, key=lambda m: m["val_acc"])
            msg += f", best val acc {best['val_acc']:.1%} (epoch {best['epoch']}, weights kept)"
        if state == "interrupted":
            msg += (". The worker ended before the run finished; its best epoch so far is kept: reopen it below or "
                    "continue it with Resume")
        (st.warning if status.get("message") or state != "done" else st.success)(
            msg + (f". {status['message']}" if status.get("message") and state != "interrupted" else ""))
        for line in shown.cache_lines():
            st.caption(line)
        if run is not None:
            preds = runs.load_predictions(shown.folder) or _runs.predict_saved_split(trained, run)
            render_results(run.metrics or metrics, run.classes, preds, run.data_config, trained, shown.folder, "job")

st.divider()
st.subheader("Runs of this lab")
every = [j for j in _jobs.lab_jobs("train")]
if not every:
    st.caption(f"No runs in this lab yet. Each run is saved to `{_dataset.session_runs()}`, kept across reloads and "
               "server restarts (open one elsewhere with `vislab.runs.load(folder)` or `vislab export --run`).")
else:
    table = []
    for j in every:
        status = j.status()
        try:
            cfg = runs.read_config(j.folder)
        except (OSError, ValueError):
            cfg = {}
        spec = (j.spec().get("spec") or {}) if (j.folder / "job.json").is_file() else {}
        accs = [m["val_acc"] for m in (runs.read_metrics(j.folder) or j.metrics())]
        table.append({"run": j.id, "status": status.get("state"), "model": cfg.get("model") or spec.get("model"),
                      "strategy": cfg.get("strategy") or spec.get("strategy"), "epochs": len(accs),
                      "best val acc": max(accs) if accs else None,
                      "saved": cfg.get("saved") or j.id[:15].replace("_", " ")})
    st.dataframe(table, hide_index=True, width="stretch")
    openable = [r["run"] for r in table if r["status"] in ("done", "stopped", "interrupted")]
    if openable:
        c1, c2, c3 = st.columns([3, 1, 1])
        pick = c1.selectbox("Reopen a run", openable, key=_state.REOPEN_PICK)
        if c2.button("Reopen"):
            ss[_state.REOPENED] = pick
        picked_state = next(r["status"] for r in table if r["run"] == pick)
        more = c3.number_input("more epochs", 1, 100, 3, key=_state.RESUME_EPOCHS, disabled=running)
        if st.button(f"Resume {pick} for {int(more)} more epochs", disabled=running or ds is None,
                     help="Continue from its kept (best) weights with its settings on the current dataset (same "
                          "classes); a new run folder is made"):
            spec = (jobs.Job(_dataset.session_runs() / pick).spec().get("spec") or _working.session_spec().to_dict())
            spec = {**spec, "train": {**spec.get("train", {}), "epochs": int(more)}}
            try:
                _jobs.submit("train", f"{pick[:40]}_resumed", {
                    "spec": spec, "report": data.report_to_dict(ds.used) if ds else None,
                    "resume": str(_dataset.session_runs() / pick)})
                st.rerun()
            except jobs.JobError as exc:
                st.warning(str(exc))
        if picked_state == "interrupted":
            st.caption(f"`{pick}` was interrupted: its best checkpoint so far opens and resumes.")
    reopened = ss.get(_state.REOPENED)
    if reopened and (_dataset.session_runs() / reopened).is_dir():
        try:
            m, run = _jobs.load_run(_dataset.session_runs() / reopened)
        except (FileNotFoundError, RuntimeError, ValueError, KeyError, OSError) as exc:
            st.error(f"Cannot reopen {reopened}: {exc}")
        else:
            preds = runs.load_predictions(_dataset.session_runs() / reopened) or _runs.predict_saved_split(m, run)
            st.markdown(f"**{reopened}** — `{run.config['model']}`, strategy {run.config['strategy']}, "
                        f"{len(run.metrics)} epochs")
            render_results(run.metrics, run.classes, preds, run.data_config, m, _dataset.session_runs() / reopened,
                           "reopened")
