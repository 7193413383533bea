import dataclasses

import streamlit as st

from pages import _charts, _dataset, _jobs, _live, _results, _route, _runlist, _shared, _state, _working
from pages._results import cache_captions, pct, when
from vislab.training import loop as training
from vislab.models import freezing
from vislab.serving import jobs, localqueue
from vislab.figures import charts as plots
from vislab.models.heads import head_names
from vislab.data.transforms import Augment
from vislab.training.experiment import Spec
from vislab.training.tasks import TrainTask

_route.through_app()  # first: a page opened on its own (the first request after a restart) goes through app.py

# ---- this page's keys (kept: a person's settings, see _state.kept) ------------------------------------------
TRAIN_EPOCHS = "train_epochs"
TRAIN_BATCH = "train_batch"
TRAIN_LR = "train_lr"
TRAIN_LAYER_DECAY = "train_layer_decay"
TRAIN_SIZE_PREFIX = "train_size_"  # + the model's own size: the image-size slider (its options follow the model)
TRAIN_DEVICE = "train_device"
TRAIN_FACTOR = "train_phase2_factor"
RESUME_EPOCHS = "resume_epochs"
REOPEN_PICK = "reopen_pick"
TRAIN_STOP = "train_stop"
TRAIN_START_REFUSED = "train_start_refused"  # why the Start callback could not queue the job (a second tab)
TRAIN_LR_NEXT = "train_lr_next"  # the LR finder's suggestion, put into the learning-rate box on the next run
LR_SWEEP = "lr_sweep"  # the LR finder's last result
LR_SWEEP_CHART = "lr_sweep_chart"
LIVE_CURVES = "live_curves"
SHOWN_ACTIVE = "_shown_active"  # the training job the page is following (its end redraws the page)

_dataset.open_page()
ss = st.session_state
st.title("Train")

ds: _dataset.Dataset | None = ss.get(_state.DATASET)
model, info = _working.working()
active = _jobs.active_job("train")  # the lab's queued or running job, read from disk: any tab sees it
running = active is not None
active_spec = active.experiment_spec().get("train", {}) if active else {}


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
        ss[TRAIN_START_REFUSED] = "Pick a dataset on the Data page first: nothing was queued."
        return
    if ss[_state.STRATEGY] == "two-phase" and int(ss[TRAIN_EPOCHS]) < 2:  # a click racing the epochs box
        ss[TRAIN_START_REFUSED] = "Two-phase needs at least 2 epochs: nothing was queued."
        return
    size = ss.get(f"{TRAIN_SIZE_PREFIX}{default_size}", default_size)
    # only the settings that apply to this plan (the page offers only those): a head-only run has one rate
    decay = float(ss.get(TRAIN_LAYER_DECAY, 1.0)) if beyond_head else 1.0
    two_phase = ss[_state.STRATEGY] == "two-phase"
    device = ss.get(TRAIN_DEVICE, "auto")
    spec = _working.working_spec()
    spec = dataclasses.replace(
        spec, img_size=size if size != default_size else None, augment=ss.get(_state.AUGMENT) or Augment(),
        train=dataclasses.replace(spec.train, epochs=int(ss[TRAIN_EPOCHS]), lr=float(ss[TRAIN_LR]),
                                  batch_size=int(ss[TRAIN_BATCH]), device=device,
                                  **({"phase2_lr_factor": float(ss.get(TRAIN_FACTOR, 0.1))} if two_phase
                                     else {}),
                                  layer_decay=None if decay == 1.0 else decay))
    plan = ss[_state.PLAN]
    try:
        task = TrainTask(spec, ds.used, plan=plan if isinstance(plan, dict) else plan.to_dict())  # the session's plan
        _jobs.submit(task, f"{spec.model}_{ss[_state.STRATEGY]}", device=device)
    except jobs.JobError as exc:
        ss[TRAIN_START_REFUSED] = str(exc)


if ds is None or not ds.used.usable:
    ss.pop(TRAIN_START_REFUSED, None)  # what the info below says already
    st.info("Pick a dataset on the **Data** page first (the bundled sample works offline).")
else:
    default_size = info.data_config.size
    c = st.columns(6)
    # while this lab's job runs, the (disabled) boxes show what it runs with; after it, they keep those values
    ss.setdefault(TRAIN_EPOCHS, 3)
    ss.setdefault(TRAIN_BATCH, 32)
    if running:
        ss[TRAIN_EPOCHS] = int(active_spec.get("epochs", ss[TRAIN_EPOCHS]))
        ss[TRAIN_BATCH] = int(active_spec.get("batch_size", ss[TRAIN_BATCH]))
    epochs = c[0].number_input("Epochs", 1, 200, disabled=running, key=_state.kept(TRAIN_EPOCHS))
    if TRAIN_LR_NEXT in ss:  # "use the suggestion" from the LR finder below, applied before the widget exists
        ss[TRAIN_LR] = ss.pop(TRAIN_LR_NEXT)
    c[1].number_input("Learning rate", 1e-7, 1.0, 1e-3, format="%.1e", disabled=running, key=_state.kept(TRAIN_LR))
    batch = c[2].select_slider("Batch size", [4, 8, 16, 32, 64, 128], disabled=running, key=_state.kept(TRAIN_BATCH))
    size = c[3].select_slider("Image size", sorted({64, 96, 128, 160, 192, 224, 256, default_size}),
                              default_size, disabled=running, key=_state.kept(f"{TRAIN_SIZE_PREFIX}{default_size}"))
    found = training.devices_found()
    c[4].selectbox("Device", ["auto", "cpu"] + (["cuda"] if any(f.startswith("cuda") for f in found) else []),
                   disabled=running, help="Found here: " + ", ".join(found), key=_state.kept(TRAIN_DEVICE))
    rep = freezing.report(model)
    strategy = ss[_state.STRATEGY]
    beyond_head = trains_beyond_head(model, rep)  # the plan (two-phase: its second phase) thaws stages
    if strategy == "two-phase":
        c[5].select_slider("Phase-2 LR factor", [0.5, 0.2, 0.1], 0.1, disabled=running, key=_state.kept(TRAIN_FACTOR),
                           help="two-phase: the second phase trains everything at lr × this")
    if beyond_head:
        st.select_slider("Per-stage LR decay (1 = the same rate everywhere)", [1.0, 0.9, 0.8, 0.7, 0.5], 1.0,
                         disabled=running, key=_state.kept(TRAIN_LAYER_DECAY),
                         help="The head trains at the learning rate; each stage toward the stem at this "
                              "factor times the rate of the stage after it")
    not_here = ([] if strategy == "two-phase" else ["a phase-2 LR factor (only two-phase has a second phase)"]) + \
        ([] if beyond_head else ["per-stage LR decay (only the head trains, so there is one rate)"])
    if not_here:
        st.caption(f"Not used by strategy **{strategy}**: {' and '.join(not_here)}.")
    st.caption(f"`{info.name}` · strategy **{strategy}** · {rep.trainable_params:,} trainable of {rep.total:,} "
               f"parameters · {len(ds.used.items)} images ({ds.markdown}) · devices found: {', '.join(found)} · "
               f"weights: {_working.weights_badge(info.weights)}")
    if strategy == "two-phase" and epochs < 2:
        st.warning("Two-phase needs at least 2 epochs.")
    b1, b2, _ = st.columns([1, 1, 4])
    start_help = "This lab already has a job; it must end (or be stopped) first." if running else None
    b1.button("Start training", type="primary", disabled=running or (strategy == "two-phase" and epochs < 2),
              help=start_help, on_click=_start, args=(default_size, beyond_head))
    refused = ss.pop(TRAIN_START_REFUSED, None)
    if refused:  # a second tab or a double click: the lab's job is already there
        st.warning(refused)
    stop_label = "Cancel" if active is not None and active.state == "queued" else "Stop"
    if b2.button(stop_label, disabled=not running, key=TRAIN_STOP):
        _jobs.stop(active)
        st.toast("Stopping after this batch…" if stop_label == "Stop" else "Cancelled.")
    with st.expander("Learning-rate finder"):
        st.caption("Raises the learning rate exponentially over ~100 batches of the current plan and records the "
                   "loss; a good rate sits where the loss falls fastest. The model is left as it was.")
        if st.button("Find a learning rate", disabled=running):
            try:
                ss[LR_SWEEP] = _working.find_lr(ds, size, int(batch))
            except ValueError as exc:  # a size this model cannot take
                st.error(str(exc))
        sweep = ss.get(LR_SWEEP)
        if sweep is not None:
            _charts.chart(plots.lr_sweep(sweep.lrs, sweep.losses, sweep.suggestion), key=LR_SWEEP_CHART)
            st.caption(sweep.cached)
            if st.button(f"Use {sweep.suggestion:.1e}", disabled=running):
                ss[TRAIN_LR_NEXT] = float(sweep.suggestion)
                st.rerun()


def progress(job: jobs.Job | None) -> None:
    """Progress of the lab's job, polled from its files (see _live.follow_job)."""
    if job is None:
        return
    if job.state == "queued":
        _live.queued_note(job, f" (the server trains {localqueue.max_jobs()} at a time per device, in order). It starts "
                               "by itself; Cancel takes it out.")
        return
    done, text = _jobs.progress_text(job)
    st.progress(done, text=text)
    if job.stop_requested:
        st.caption("Stopping after this batch…")
    metrics = job.metrics()
    cache_captions(_jobs.cache_stories(job, metrics, done=False))
    if metrics:
        _charts.chart(_results.curves(metrics), key=LIVE_CURVES)
    else:
        st.caption("Curves appear after the first epoch.")


def last_job(shown: jobs.Job) -> None:
    """How the lab's last job ended and, when it left weights, its results."""
    status = shown.status()
    state = status.get("state")
    if state == "error":
        st.error(f"Training failed: {status.get('message')}")
        return
    if state == "cancelled":
        st.info(f"The last job was cancelled ({status.get('message', '')}).")
        return
    summary = _results.finished_summary(str(shown.folder), _results.stamp(shown.folder))
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
        _results.show_run(shown.folder, trained, run, run.metrics or summary["metrics"], "job")
        _shared.share_box(shown.folder.name, "job")  # a finished run: a read-only link for anyone


def reopen_and_resume(table: list[dict]) -> None:
    """Pick one of the lab's finished runs: reopen it (its results below) or resume it for more epochs."""
    openable = [r["run"] for r in table if r["status"] in ("done", "stopped", "interrupted")]
    if not openable:
        return
    c1, c2, c3 = st.columns([3, 1, 1])
    by_run = {r["run"]: r for r in table}
    _state.follow(REOPEN_PICK, openable[0])  # the newest run, until a person picks another
    pick = c1.selectbox("Reopen a run", openable, key=REOPEN_PICK, format_func=lambda r: (
        f"{by_run[r]['date']} · {by_run[r]['model']} · {by_run[r]['head']} head · {by_run[r]['strategy']} · "
        f"{pct(None if by_run[r]['best val acc'] is None else by_run[r]['best val acc'] / 100)} · {r}"))
    if c2.button("Reopen"):
        ss[_state.REOPENED] = pick
    more = c3.number_input("more epochs", 1, 100, 3, key=_state.kept(RESUME_EPOCHS), disabled=running)
    if st.button(f"Resume {pick} for {int(more)} more epochs", disabled=running or ds is None,
                 help="Continue from its kept (best) weights with its settings on the current dataset (same "
                      "classes); a new run folder is made"):
        spec = (jobs.Job(_dataset.runs_folder() / pick).experiment_spec() or _working.working_spec().to_dict())
        spec = {**spec, "train": {**spec.get("train", {}), "epochs": int(more)}}
        try:
            task = TrainTask(Spec.from_dict(spec), ds.used, resume=str(_dataset.runs_folder() / pick))
            _jobs.submit(task, f"{pick[:40]}_resumed")
            st.rerun()
        except jobs.JobError as exc:
            st.warning(str(exc))
    if by_run[pick]["status"] == "interrupted":
        st.caption(f"`{pick}` was interrupted: its best checkpoint so far opens and resumes.")


def reopened_run(reopened: str) -> None:
    """The results of the run reopened from the list."""
    folder = _dataset.runs_folder() / reopened
    try:
        m, run = _jobs.load_run(folder)
    except (FileNotFoundError, RuntimeError, ValueError, KeyError, OSError) as exc:
        st.error(f"Cannot reopen {reopened}: {exc}")
        return
    best = max((x["val_acc"] for x in run.metrics), default=None)
    st.markdown(f"**{reopened}** — `{run.config['model']}`, {run.config.get('head_kind', 'linear')} head, "
                f"strategy {run.config['strategy']}, {len(run.metrics)} epochs, best val acc {pct(best)}, "
                f"saved {when(run.config.get('saved'), run_id=reopened)}")
    _results.show_run(folder, m, run, run.metrics, "reopened")
    _shared.share_box(reopened, "reopened")


_live.follow_job("train", progress, mark=SHOWN_ACTIVE)

current = _jobs.lab_jobs("train")
shown = next((j for j in current if j.id == ss.get(_state.LAST_RUN)), None) if ss.get(_state.LAST_RUN) else None
if shown is not None and not shown.active:
    last_job(shown)

st.divider()
st.subheader("Runs of this lab")
if not current:
    st.caption(f"No runs in this lab yet. Each run is saved to `{_dataset.runs_folder()}`, kept across reloads and "
               "server restarts (open one elsewhere with `vislab.training.runs.load(folder)` or `vislab export --run`).")
else:
    table = _runlist.table(current)
    st.dataframe(table, hide_index=True, width="stretch", column_order=_runlist.COLUMNS, column_config={
        "best val acc": st.column_config.NumberColumn(format="%.1f%%", help="the best epoch's validation accuracy"),
        "date": st.column_config.TextColumn(help="when the run was saved (or started, if it never was)")})
    reopen_and_resume(table)
    reopened = ss.get(_state.REOPENED)
    if reopened and (_dataset.runs_folder() / reopened).is_dir():
        reopened_run(reopened)
