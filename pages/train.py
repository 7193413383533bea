import dataclasses
import time
from datetime import datetime
from pathlib import Path

import streamlit as st
from PIL import Image, UnidentifiedImageError

from pages import _dataset, _images, _jobs, _route, _runs, _state, _working
from vislab.data import folders as data
from vislab.training import evaluation, runs, loop as training
from vislab.models import freezing
from vislab.serving import jobs
from vislab.figures import charts as plots
from vislab.models.heads import head_names
from vislab.data.transforms import Augment, load_image, to_rgb

_route.through_app()  # first: a page opened on its own (the first request after a restart) goes through app.py

_dataset.open_page()
ss = st.session_state
st.title("Train")

ds: _dataset.Dataset | None = ss.get(_state.DATASET)
model, info = _working.working()
active = _jobs.active_job("train")  # the lab's queued or running job, read from disk: any tab sees it
running = active is not None
active_spec = (active.spec().get("spec") or {}).get("train", {}) if active else {}


def pct(x: float | None) -> str:
    """An accuracy as the page writes it everywhere: 93.8%."""
    return "—" if x is None else f"{x:.1%}"


def when(saved: str | None = None, epoch_s: float | None = None, run_id: str = "") -> str:
    """A date as the page writes it everywhere: YYYY-MM-DD HH:MM (from a run's saved time, a timestamp, or
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


RUN_FILES = ("status.json", "job.json", "events.jsonl", "progress.json", "config.json", "metrics.json",
             "predictions.json", "model.safetensors", "checkpoint/model.safetensors", "checkpoint/metrics.json",
             "checkpoint/config.json")


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
    out = {"curves": curves(_metrics), "preds": None}
    preds = runs.load_predictions(folder) or _runs.predict_saved_split(_model, _run)
    if preds is None or not len(preds.labels):
        return out
    classes = _run.classes
    cm = evaluation.confusion(preds, len(classes))
    per_class = plots.per_class_accuracy(evaluation.per_class_accuracy(cm), classes)
    per_class.update_yaxes(tickformat=".0%")
    imgs, caps, colours = [], [], []
    for i in evaluation.top_losses(preds, 12):
        p, y, k = preds.paths[i], preds.labels[i], preds.predicted[i]
        imgs.append(load_image(p))
        caps.append(f"true: {classes[y]}\npred: {classes[k]} (p={preds.probs[i, k]:.2f})\n"
                    f"loss {preds.losses[i]:.2f}")
        colours.append("#B00020" if k != y else "#006400")
    out.update(preds=preds, confusion=plots.confusion_matrix(cm, classes), per_class=per_class,
               grid=plots.image_grid(imgs, caps, cols=6, cell=170, colours=colours))
    return out


def render_results(shown: dict, classes, cfg, trained_model, run_dir, key):
    """Curves, confusion matrix, per-class accuracy, top losses and classify-an-image for a finished run
    (`shown`: its cached `results`)."""
    _state.chart(shown["curves"], key=f"{_state.CURVES_PREFIX}{key}")
    if shown["preds"] is None:
        st.info("No validation images to evaluate for this run.")
        return
    left, right = st.columns(2)
    with left:
        _state.chart(shown["confusion"], key=f"{_state.CM_PREFIX}{key}")
    with right:
        _state.chart(shown["per_class"], key=f"{_state.PC_PREFIX}{key}")
    st.subheader("Top losses: the validation images it got most wrong")
    grid = shown["grid"]
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


def cache_captions(stories: list[tuple[str, str]]) -> None:
    """How the feature cache ran, said for a learner; the engineering lines folded away."""
    if not stories:
        return
    for story, _ in stories:
        st.caption(story)
    with st.expander("Feature cache: the engineering detail"):
        for _, line in stories:
            st.caption(line)


def trains_beyond_head(model, rep: freezing.FreezeReport) -> bool:
    """Whether the plan trains anything besides the head: only then do stages get rates of their own."""
    heads = head_names(model)
    return any(not any(n == h or n.startswith(f"{h}.") for h in heads) for n in rep.trainable_tensors)


def _start(default_size: int, beyond_head: bool) -> None:
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
    # only the settings that apply to this plan (the page offers only those): a head-only run has one rate
    decay = float(ss.get(_state.TRAIN_LAYER_DECAY, 1.0)) if beyond_head else 1.0
    two_phase = ss[_state.STRATEGY] == "two-phase"
    device = ss.get(_state.TRAIN_DEVICE, "auto")
    spec = _working.working_spec()
    spec = dataclasses.replace(
        spec, img_size=size if size != default_size else None, augment=ss.get(_state.AUGMENT) or Augment(),
        train=dataclasses.replace(spec.train, epochs=int(ss[_state.TRAIN_EPOCHS]), lr=float(ss[_state.TRAIN_LR]),
                                  batch_size=int(ss[_state.TRAIN_BATCH]), device=device,
                                  **({"phase2_lr_factor": float(ss.get(_state.TRAIN_FACTOR, 0.1))} if two_phase
                                     else {}),
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
    rep = freezing.report(model)
    strategy = ss[_state.STRATEGY]
    beyond_head = trains_beyond_head(model, rep)  # the plan (two-phase: its second phase) thaws stages
    if strategy == "two-phase":
        c[5].select_slider("Phase-2 LR factor", [0.5, 0.2, 0.1], 0.1, disabled=running, key=_state.TRAIN_FACTOR,
                           help="two-phase: the second phase trains everything at lr × this")
    if beyond_head:
        st.select_slider("Per-stage LR decay (1 = the same rate everywhere)", [1.0, 0.9, 0.8, 0.7, 0.5], 1.0,
                         disabled=running, key=_state.TRAIN_LAYER_DECAY,
                         help="The head trains at the learning rate; each stage toward the stem at this "
                              "factor times the rate of the stage after it")
    not_here = ([] if strategy == "two-phase" else ["a phase-2 LR factor (only two-phase has a second phase)"]) + \
        ([] if beyond_head else ["per-stage LR decay (only the head trains, so there is one rate)"])
    if not_here:
        st.caption(f"Not used by strategy **{strategy}**: {' and '.join(not_here)}.")
    st.caption(f"`{info.name}` · strategy **{strategy}** · {rep.trainable_params:,} trainable of {rep.total:,} "
               f"parameters · {len(ds.used.items)} images ({ds.label}) · devices found: {', '.join(found)} · "
               f"weights: {_working.weights_badge(info.weights)}")
    if strategy == "two-phase" and epochs < 2:
        st.warning("Two-phase needs at least 2 epochs.")
    b1, b2, _ = st.columns([1, 1, 4])
    start_help = "This lab already has a job; it must end (or be stopped) first." if running else None
    b1.button("Start training", type="primary", disabled=running or (strategy == "two-phase" and epochs < 2),
              help=start_help, on_click=_start, args=(default_size, beyond_head))
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


RUN_COLUMNS = ("run", "date", "model", "head", "strategy", "epochs", "best val acc", "status")


@st.cache_data(max_entries=32, show_spinner=False)
def runs_table(versions: tuple) -> list[dict]:
    """One row per training job of the lab, read from its files only when one of them changed (`versions`:
    (folder, stamp) per job, newest first)."""
    table = []
    for folder, _ in versions:
        j = jobs.Job(Path(folder))
        status = j.status()
        try:
            cfg = runs.read_config(j.folder)
        except (OSError, ValueError):
            cfg = {}
        try:
            spec = (j.spec().get("spec") or {}) if (j.folder / "job.json").is_file() else {}
        except ValueError:
            spec = {}
        accs = [m["val_acc"] for m in (runs.read_metrics(j.folder) or j.metrics())]
        table.append({"run": j.id, "date": when(cfg.get("saved"), status.get("created") or status.get("queued"), j.id),
                      "model": cfg.get("model") or spec.get("model"),
                      "head": cfg.get("head_kind") or spec.get("head") or "linear",
                      "strategy": cfg.get("strategy") or spec.get("strategy"), "epochs": len(accs),
                      "best val acc": round(100 * max(accs), 1) if accs else None, "status": status.get("state")})
    return table


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
    metrics = job.metrics()
    cache_captions(_jobs.cache_stories(job, metrics, done=False))
    if metrics:
        _state.chart(curves(metrics), key=_state.LIVE_CURVES)
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
        summary = finished_summary(str(shown.folder), stamp(shown.folder))
        line = summary["totals"]
        try:
            trained, run = _jobs.load_run(shown.folder)
        except (FileNotFoundError, RuntimeError, ValueError, KeyError, OSError) as exc:
            trained, run = None, None
            line += f" (no weights to show: {exc})"
        word = {"done": "Done", "stopped": "Stopped", "interrupted": "Interrupted"}.get(state, state)
        msg = f"{word}: {line}"
        if run is not None and run.metrics:
            best = max(run.metrics, key=lambda m: m["val_acc"])
            msg += f", best val acc {pct(best['val_acc'])} (epoch {best['epoch']}, weights kept)"
        if state == "interrupted":
            msg += (". The worker ended before the run finished; its best epoch so far is kept: reopen it below or "
                    "continue it with Resume")
        (st.warning if status.get("message") or state != "done" else st.success)(
            msg + (f". {status['message']}" if status.get("message") and state != "interrupted" else ""))
        cache_captions(summary["stories"])
        if run is not None:
            shown_results = results(str(shown.folder), stamp(shown.folder), trained, run,
                                    run.metrics or summary["metrics"])
            render_results(shown_results, run.classes, run.data_config, trained, shown.folder, "job")

st.divider()
st.subheader("Runs of this lab")
every = current  # the lab's training jobs, listed above
if not every:
    st.caption(f"No runs in this lab yet. Each run is saved to `{_dataset.runs_folder()}`, kept across reloads and "
               "server restarts (open one elsewhere with `vislab.training.runs.load(folder)` or `vislab export --run`).")
else:
    table = runs_table(tuple((str(j.folder), stamp(j.folder)) for j in every))
    for row in table:  # a running job whose worker is gone changes no file: its state is asked for each time
        if row["status"] in jobs.ACTIVE:
            row["status"] = jobs.Job(_dataset.runs_folder() / row["run"]).state
    st.dataframe(table, hide_index=True, width="stretch", column_order=RUN_COLUMNS, column_config={
        "best val acc": st.column_config.NumberColumn(format="%.1f%%", help="the best epoch's validation accuracy"),
        "date": st.column_config.TextColumn(help="when the run was saved (or started, if it never was)")})
    openable = [r["run"] for r in table if r["status"] in ("done", "stopped", "interrupted")]
    if openable:
        c1, c2, c3 = st.columns([3, 1, 1])
        by_run = {r["run"]: r for r in table}
        _state.follow(_state.REOPEN_PICK, openable[0])  # the newest run, until a person picks another
        pick = c1.selectbox("Reopen a run", openable, key=_state.REOPEN_PICK, format_func=lambda r: (
            f"{by_run[r]['date']} · {by_run[r]['model']} · {by_run[r]['head']} head · {by_run[r]['strategy']} · "
            f"{pct(None if by_run[r]['best val acc'] is None else by_run[r]['best val acc'] / 100)} · {r}"))
        if c2.button("Reopen"):
            ss[_state.REOPENED] = pick
        picked_state = next(r["status"] for r in table if r["run"] == pick)
        more = c3.number_input("more epochs", 1, 100, 3, key=_state.RESUME_EPOCHS, disabled=running)
        if st.button(f"Resume {pick} for {int(more)} more epochs", disabled=running or ds is None,
                     help="Continue from its kept (best) weights with its settings on the current dataset (same "
                          "classes); a new run folder is made"):
            spec = (jobs.Job(_dataset.runs_folder() / pick).spec().get("spec") or _working.working_spec().to_dict())
            spec = {**spec, "train": {**spec.get("train", {}), "epochs": int(more)}}
            try:
                _jobs.submit("train", f"{pick[:40]}_resumed", {
                    "spec": spec, "report": data.report_to_dict(ds.used) if ds else None,
                    "resume": str(_dataset.runs_folder() / pick)})
                st.rerun()
            except jobs.JobError as exc:
                st.warning(str(exc))
        if picked_state == "interrupted":
            st.caption(f"`{pick}` was interrupted: its best checkpoint so far opens and resumes.")
    reopened = ss.get(_state.REOPENED)
    if reopened and (_dataset.runs_folder() / reopened).is_dir():
        try:
            m, run = _jobs.load_run(_dataset.runs_folder() / reopened)
        except (FileNotFoundError, RuntimeError, ValueError, KeyError, OSError) as exc:
            st.error(f"Cannot reopen {reopened}: {exc}")
        else:
            folder = _dataset.runs_folder() / reopened
            best = max((x["val_acc"] for x in run.metrics), default=None)
            st.markdown(f"**{reopened}** — `{run.config['model']}`, {run.config.get('head_kind', 'linear')} head, "
                        f"strategy {run.config['strategy']}, {len(run.metrics)} epochs, best val acc {pct(best)}, "
                        f"saved {when(run.config.get('saved'), run_id=reopened)}")
            render_results(results(str(folder), stamp(folder), m, run, run.metrics), run.classes, run.data_config,
                           m, folder, "reopened")
