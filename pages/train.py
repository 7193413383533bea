import os
import time

import streamlit as st
from PIL import Image, UnidentifiedImageError

from pages import _lab
from vislab import evaluation, experiment, freezing, plots, runs, training
from vislab.training import TrainConfig
from vislab.transforms import Augment, load_image, to_rgb

_lab.init_state()
ss = st.session_state
st.title("Train")

ds: _lab.Dataset | None = ss.get(_lab.DATASET)
model, info = _lab.working()
job: _lab.TrainJob | None = ss.get(_lab.JOB)
running = bool(job and job.running)


def render_results(metrics, classes, predictions, cfg, trained_model, run_dir, key):
    """Curves, confusion matrix, per-class accuracy, top losses and classify-an-image for a finished run."""
    _lab.chart(plots.curves(metrics), key=f"curves_{key}")
    if predictions is None or not len(predictions.labels):
        st.info("No validation images to evaluate for this run.")
        return
    cm = evaluation.confusion(predictions, len(classes))
    left, right = st.columns(2)
    with left:
        _lab.chart(plots.confusion_matrix(cm, classes), key=f"cm_{key}")
    with right:
        _lab.chart(plots.per_class_accuracy(evaluation.per_class_accuracy(cm), classes), key=f"pc_{key}")
    st.subheader("Top losses: the validation images it got most wrong")
    worst = evaluation.top_losses(predictions, 12)
    imgs, caps, colours = [], [], []
    for i in worst:
        p, y, k = predictions.paths[i], predictions.labels[i], predictions.predicted[i]
        imgs.append(load_image(p))
        caps.append(f"true {classes[y]} · pred {classes[k]}\n"
                    f"p={predictions.probs[i, k]:.2f} loss {predictions.losses[i]:.2f}")
        colours.append("#B00020" if k != y else "#006400")
    grid = plots.image_grid(imgs, caps, cols=6, cell=170, colours=colours)
    st.image(grid, width="stretch")
    _lab.download_png(grid, f"top_losses_{key}.png", "Download top losses (PNG)")
    st.subheader("Classify a new image")
    up = st.file_uploader("An image", type=["jpg", "jpeg", "png", "bmp", "webp", "gif", "tif", "tiff"],
                          key=f"classify_{key}")
    if up is not None:
        try:
            img = to_rgb(Image.open(up))
        except (UnidentifiedImageError, OSError) as exc:
            st.error(f"Cannot read this file as an image: {exc}")
        else:
            c1, c2 = st.columns([1, 2])
            c1.image(img, caption=up.name, width="stretch")
            with c2:
                _lab.chart(plots.topk(evaluation.classify(trained_model, img, cfg, classes, k=min(5, len(classes)))),
                           key=f"topk_{key}")
    if run_dir:
        st.caption(f"Run folder: `{run_dir}`")


if ds is None or not ds.used.usable:
    st.info("Pick a dataset on the **Data** page first (the bundled sample works offline).")
else:
    default_size = info.data_config.size
    c = st.columns(6)
    epochs = c[0].number_input("Epochs", 1, 200, 3, disabled=running)
    if "train_lr_next" in ss:  # "use the suggestion" from the LR finder below, applied before the widget exists
        ss["train_lr"] = ss.pop("train_lr_next")
    lr = c[1].number_input("Learning rate", 1e-7, 1.0, 1e-3, format="%.1e", disabled=running, key="train_lr")
    batch = c[2].select_slider("Batch size", [4, 8, 16, 32, 64, 128], 32, disabled=running)
    size = c[3].select_slider("Image size", sorted({64, 96, 128, 160, 192, 224, 256, default_size}),
                              default_size, disabled=running)
    found = training.devices_found()
    device = c[4].selectbox("Device", ["auto", "cpu"] + (["cuda"] if any(f.startswith("cuda") for f in found)
                                                         else []), disabled=running,
                            help="Found here: " + ", ".join(found))
    factor = c[5].select_slider("Phase-2 LR factor", [0.5, 0.2, 0.1], 0.1, disabled=running,
                                help="two-phase: the second phase trains everything at lr × this")
    decay = st.select_slider("Per-stage LR decay (1 = the same rate everywhere)", [1.0, 0.9, 0.8, 0.7, 0.5], 1.0,
                             disabled=running, key="train_layer_decay",
                             help="The head trains at the learning rate; each stage toward the stem at this "
                                  "factor times the rate of the stage after it")
    rep = freezing.report(model)
    strategy = ss[_lab.STRATEGY]
    st.caption(f"`{info.name}` · strategy **{strategy}** · {rep.trainable_params:,} trainable of {rep.total:,} "
               f"parameters · {len(ds.used.items)} images ({ds.label}) · devices found: {', '.join(found)} · "
               f"weights: {_lab.weights_badge(info.weights)}")
    if strategy == "two-phase" and epochs < 2:
        st.warning("Two-phase needs at least 2 epochs.")
    b1, b2, _ = st.columns([1, 1, 4])
    if b1.button("Start training", type="primary", disabled=running or (strategy == "two-phase" and epochs < 2)):
        spec = experiment.Spec(model=ss[_lab.MODEL], strategy=strategy if strategy in freezing.STRATEGIES
                               else "custom", head=ss[_lab.HEAD], img_size=size if size != default_size else None,
                               val_frac=ds.val_frac, per_class=None, augment=ss.get("augment") or Augment(),
                               train=TrainConfig(epochs=int(epochs), lr=float(lr), batch_size=int(batch),
                                                 seed=ds.seed, device=device, phase2_lr_factor=float(factor),
                                                 layer_decay=None if decay == 1.0 else float(decay)))
        job = _lab.start_training(spec, ds)
        running = True
    if b2.button("Stop", disabled=not running):
        job.stop.set()
        st.toast("Stopping after this batch…")
    with st.expander("Learning-rate finder"):
        st.caption("Raises the learning rate exponentially over ~100 batches of the current plan and records the "
                   "loss; a good rate sits where the loss falls fastest. The model is left as it was.")
        if st.button("Find a learning rate", disabled=running):
            try:
                ss["lr_sweep"] = _lab.find_lr(ds, size, int(batch))
            except ValueError as exc:  # a size this model cannot take
                st.error(str(exc))
        sweep = ss.get("lr_sweep")
        if sweep is not None:
            _lab.chart(plots.lr_sweep(sweep.lrs, sweep.losses, sweep.suggestion), key="lr_sweep_chart")
            st.caption(sweep.cached)
            if st.button(f"Use {sweep.suggestion:.1e}", disabled=running):
                ss["train_lr_next"] = float(sweep.suggestion)
                st.rerun()


@st.fragment(run_every=1.0 if running else None)
def live():
    job: _lab.TrainJob | None = ss.get(_lab.JOB)
    if job is None:
        return
    if job.running:
        done = (job.epoch - 1 + job.batch / max(job.batches, 1)) / max(job.total_epochs, 1)
        st.progress(min(max(done, 0.0), 1.0),
                    text=f"epoch {job.epoch}/{job.total_epochs} ({job.phase}) · batch {job.batch}/{job.batches}"
                         f" · loss {job.loss:.3f} · {time.perf_counter() - job.started:.0f} s")
        for line in job.cache:
            st.caption(line)
        if job.metrics:
            _lab.chart(plots.curves(job.metrics), key="live_curves")
        else:
            st.caption("Curves appear after the first epoch.")
    elif ss.get("_shown_job") is not job:  # it just finished: redraw the whole page once, with results
        ss["_shown_job"] = job
        st.rerun(scope="app")


live()

if job is not None and not job.running:
    if job.status == "error":
        st.error(f"Training failed: {job.message}")
    else:
        seconds = [m["seconds"] for m in job.metrics]
        msg = (f"{'Stopped' if job.status == 'stopped' else 'Done'}: {len(job.metrics)} epochs, "
               f"{sum(seconds) / max(len(seconds), 1):.1f} s per epoch")
        if job.result and job.result.history.epochs:
            h = job.result.history
            msg += f", best val acc {h.best_val_acc:.1%} (epoch {h.best_epoch}, weights kept)"
        (st.warning if job.message else st.success)(msg + (f". {job.message}" if job.message else ""))
        for line in job.cache:
            st.caption(line)
        if job.result and job.metrics:
            render_results(job.metrics, job.result.classes, job.predictions, job.result.info.data_config,
                           job.result.model, job.result.run_dir, "job")

st.divider()
st.subheader("Saved runs")
saved = runs.list_runs(_lab.session_runs())
if not saved:
    st.caption(f"No runs in this browser session yet. Each run is saved to `{_lab.session_runs()}` "
               "(open older ones with `vislab.runs.load(folder)` or `vislab export --run`).")
else:
    table = [{"run": r.name, "model": r.config.get("model"), "strategy": r.config.get("strategy"),
              "epochs": len(r.metrics), "best val acc": r.best_val_acc, "saved": r.config.get("saved")}
             for r in saved]
    st.dataframe(table, hide_index=True, width="stretch")
    pick = st.selectbox("Reopen a run", [r.name for r in saved], key="reopen_pick")
    if st.button("Reopen"):
        try:
            m, run = runs.load(_lab.session_runs() / pick)
        except (FileNotFoundError, RuntimeError, ValueError) as exc:
            st.error(f"Cannot reopen {pick}: {exc}")
        else:
            split = runs.load_split(run.path)
            preds = None
            if split and all(os.path.exists(p) for p, _ in split[1]):
                preds = evaluation.predict(m, split[1], run.data_config)
            ss["reopened"] = (m, run, preds)
    if ss.get("reopened"):
        m, run, preds = ss["reopened"]
        st.markdown(f"**{run.name}** — `{run.config['model']}`, strategy {run.config['strategy']}, "
                    f"{len(run.metrics)} epochs")
        render_results(run.metrics, run.classes, preds, run.data_config, m, run.path, "reopened")
