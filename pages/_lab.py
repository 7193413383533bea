"""The Streamlit layer that needs models: cached resources, the session's working model, datasets, views.

Pages import from here and from `vislab`; no torch math happens in a page. The pretrained model is cached
once per process (`st.cache_resource`) and never trained in place: each browser session works on its own
copy, kept in `st.session_state`. Training runs in worker processes (pages/_jobs.py); what the session
chose is kept in its lab (pages/_state.py).
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from pages._state import (AUGMENT, BN, COMPARE_SHOWN, ZIP_FOLDER, DATASET, HEAD, LAST_RUN, MODEL, PENDING_DATASET, PLAN, PLAN_VERSION,  # noqa: F401
                          PLOTLY_CONFIG, REOPENED, STRATEGY, THAW_LAST, WORKING, chart, clean_work_dirs,
                          current_lab, sidebar)
from pages import _state
from vislab import catalog, data, experiment, freezing, models, stages, training, weights
from vislab.freezing import FreezePlan


@dataclass
class Dataset:
    """What the Data page produced: the validated report and its split."""

    report: data.DataReport
    label: str  # where it came from, for the sidebar
    per_class: int | None = None
    val_frac: float = 0.2
    seed: int = 0

    @property
    def used(self) -> data.DataReport:
        return data.subset(self.report, self.per_class, self.seed)

    def split(self):
        used = self.used
        return data.split(used.items, self.val_frac, self.seed, used.fixed_val)

    def to_state(self, lab) -> dict:
        """What the lab keeps (small); the report itself goes to the lab's dataset.json once per report."""
        key = f"{self.report.root}|{len(self.report.items)}|{id(self.report)}"
        if getattr(self, "_saved_key", None) != key:
            lab.write_dataset(data.report_to_dict(self.report))
            self._saved_key = key
        return {"label": self.label, "per_class": self.per_class, "val_frac": self.val_frac, "seed": self.seed,
                "root": self.report.root, "images": len(self.report.items)}


def init_state() -> None:
    """Session defaults, and what the lab saved that needs the heavy libraries (dataset, augmentations)."""
    _state.init_state()
    restore()


def restore() -> None:
    ss = st.session_state
    aug = ss.get(AUGMENT)
    if isinstance(aug, tuple):
        from vislab.transforms import Augment

        try:
            ss[AUGMENT] = Augment(**aug[1])
        except TypeError:
            ss.pop(AUGMENT, None)
    pending = ss.pop(PENDING_DATASET, None)
    if not pending:
        return
    saved = current_lab().read_dataset()
    try:
        report = data.report_from_dict(saved) if saved else None
    except (KeyError, TypeError, ValueError):
        report = None
    if report is None or not Path(report.root).is_dir() or not all(Path(p).is_file() for p, _ in report.items[:5]):
        st.warning(f"The dataset this lab used ({pending.get('label', 'saved')}) is no longer on this server: "
                   "pick it again on the Data page.")
        ss.pop(DATASET, None)
        return
    ss[DATASET] = Dataset(report, pending.get("label", "saved dataset"), pending.get("per_class"),
                          float(pending.get("val_frac", 0.2)), int(pending.get("seed", 0)))
    ss[DATASET]._saved_key = f"{report.root}|{len(report.items)}|{id(report)}"
    ss.pop(WORKING, None)


def session_runs() -> Path:
    """This lab's runs: other labs' runs on a shared server are never listed or opened."""
    return current_lab().runs_dir


def session_dir() -> Path:
    """This lab's own folder for uploads and extracted zips (kept across reloads and restarts)."""
    folder = current_lab().data_dir
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ---- cached, shared resources -------------------------------------------------------------------------
def _weights_key(name: str) -> str:
    """Changes when the weights on disk for `name` change (an import), so the cache reloads."""
    try:
        st_ = weights.status(name, catalog.source_of(name))
    except ValueError:
        return "unknown"
    if st_.path is None:
        return "random"
    return f"{st_.path}:{st_.path.stat().st_mtime_ns}"


@st.cache_resource(show_spinner="Loading the pretrained model…", max_entries=4)
def _pretrained(name: str, weights_key: str):
    return models.create_model(name, num_classes=None, weights_choice="auto")


def pretrained(name: str | None = None):
    """(model, info) with the original head, shared by all sessions: never train it in place."""
    name = name or st.session_state[MODEL]
    return _pretrained(name, _weights_key(name))


@st.cache_data(show_spinner=False, ttl=30)
def catalog_rows() -> list[dict]:
    rows = []
    for e in catalog.CATALOG:
        status = weights.status(e.name, e.source)
        rows.append({
            "model": e.name, "family": e.family, "year": e.year, "source": e.source,
            "params (M)": round(e.params / 1e6, 1), "SE blocks": e.has_se, "self-attention": e.has_attention,
            "CAM layer": e.cam_layer, "weights": weights_badge(status), "idea": e.idea,
        })
    return rows


def weights_badge(status: weights.WeightsStatus) -> str:
    if not status.available:
        return "none: random init"
    return f"{status.source}" + (f" ({status.note})" if status.note else "")


@st.cache_data(show_spinner=False, max_entries=2000)
def _thumbnail(path: str, mtime: float, size: int):
    from vislab.transforms import load_image

    img = load_image(path)
    img.thumbnail((size, size))  # a 6000 px photo is not sent to the browser on every rerun
    return img


def thumbnail(path: str, size: int = 256):
    """An upright RGB thumbnail of an image file, cached per file version."""
    return _thumbnail(str(path), Path(path).stat().st_mtime, size)


@st.cache_data(show_spinner="Checking the dataset…", max_entries=8)
def scan(path: str, mtime: float) -> data.DataReport:
    return data.scan_folder(path)


@st.cache_data(show_spinner="Tracing output shapes…", max_entries=16)
def output_shapes(key: tuple, _model) -> dict:
    """Output shape of every module, computed once per (model, head, classes, input size) key."""
    from vislab import architecture

    return architecture.output_shapes(_model, key[-1])


def shapes_for(model, info) -> dict:
    ss = st.session_state
    return output_shapes((ss[MODEL], ss[HEAD], info.num_classes, tuple(info.data_config.input_size)), model)


# ---- the session's working model ---------------------------------------------------------------------
def num_classes() -> int:
    ds = st.session_state.get(DATASET)
    return len(ds.report.classes) if ds else 2


def session_spec(strategy: str | None = None) -> experiment.Spec:
    """The session's choices as an experiment spec (what the working model and a job are built from)."""
    ss = st.session_state
    ds = ss.get(DATASET)
    strategy = strategy or ss[STRATEGY]
    return experiment.Spec(model=ss[MODEL], strategy=strategy if strategy in freezing.STRATEGIES else "custom",
                           thaw_last=int(ss[THAW_LAST]), bn=None if strategy == "scratch" else ss[BN],
                           head=ss[HEAD], weights="auto", val_frac=ds.val_frac if ds else 0.2,
                           train=training.TrainConfig(seed=ds.seed if ds else 0))


def working():
    """(model, info): this session's copy of the pretrained model, with a head for its dataset's classes."""
    ss = st.session_state
    key = (ss[MODEL], ss[HEAD], num_classes(), _weights_key(ss[MODEL]), ss[STRATEGY] == "scratch")
    cached = ss.get(WORKING)
    if cached is None or cached[0] != key:
        spec = session_spec("scratch" if ss[STRATEGY] == "scratch" else "head")
        base, base_info = pretrained() if spec.strategy != "scratch" else (None, None)
        model, info, _ = experiment.prepare(spec, num_classes(), base, base_info)  # the one job builder
        ss[WORKING] = (key, model, info)
    _, model, info = ss[WORKING]
    plan = ss.get(PLAN)
    if isinstance(plan, dict):  # saved in the lab: rebuild it for this model
        try:
            plan = FreezePlan.from_dict(plan)
        except (KeyError, TypeError, ValueError):
            plan = None
        ss[PLAN] = plan
    names = {s.name for s in stages.stages(model)}
    if plan is None or set(plan.trainable) != names:  # no plan yet, or one for another model
        strategy = ss[STRATEGY] if ss[STRATEGY] in freezing.STRATEGIES else "head"
        bn = None if strategy == "scratch" else ss[BN]
        ss[PLAN] = freezing.preset(model, strategy, max(1, min(ss[THAW_LAST], len(names) - 1)), bn)[-1]
    freezing.apply(model, ss[PLAN], strict=False)
    return model, info


def apply_preset(strategy: str, thaw_last: int | None = None, bn: str | None = None) -> None:
    """Set the session's plan from a course strategy (Home's advisor and the Freeze page both call this)."""
    ss = st.session_state
    ss[STRATEGY] = strategy
    if thaw_last is not None:
        ss[THAW_LAST] = thaw_last
    if bn is not None:
        ss[BN] = bn
    ss.pop(PLAN, None)
    working()  # rebuilds the plan from the preset (and the model, when switching to or from scratch)


def set_model(name: str, head: str | None = None) -> None:
    ss = st.session_state
    if name != ss[MODEL] or (head and head != ss[HEAD]):
        ss[MODEL] = name
        if head:
            ss[HEAD] = head
        ss.pop(PLAN, None)
        ss.pop(WORKING, None)
        for k in [k for k in ss if str(k).endswith(VIEW_CHOICE)]:  # the look pages pick their default again
            ss.pop(k, None)


# ---- small rendering helpers -------------------------------------------------------------------------
def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def download_png(img, name: str, label: str = "Download PNG") -> None:
    st.download_button(label, png_bytes(img), file_name=name, mime="image/png", key=f"dl-{name}")


# ---- inputs shared by the "look inside" pages ---------------------------------------------------------
PHOTOS = {"cat": "chelsea", "coffee": "coffee", "astronaut": "astronaut", "rocket": "rocket",
          "motorcycle": "stereo_motorcycle"}


@st.cache_data(show_spinner=False)
def photo(name: str):
    """A scikit-image bundled photo as a PIL image."""
    import skimage.data
    from PIL import Image

    arr = getattr(skimage.data, PHOTOS[name])()
    return Image.fromarray(arr[0] if isinstance(arr, tuple) else arr).convert("RGB")


def pick_images(key: str, max_n: int = 8, default_n: int = 1) -> list[tuple[str, object]]:
    """Images from scikit-image's photos, the current validation split, or an upload: [(label, PIL)]."""
    from PIL import Image, UnidentifiedImageError

    from vislab.transforms import load_image, to_rgb

    ds: Dataset | None = st.session_state.get(DATASET)
    sources = ["bundled photos"] + (["validation images"] if ds else []) + ["upload"]
    source = st.radio("Images", sources, horizontal=True, key=f"{key}_src")
    if source == "bundled photos":
        names = st.multiselect("Photos", list(PHOTOS), default=list(PHOTOS)[:default_n], max_selections=max_n,
                               key=f"{key}_photos")
        return [(n, photo(n)) for n in names]
    if source == "validation images":
        _, val = ds.split()
        current = current_run()
        preds = current[2] if current else None
        order = list(range(len(val)))
        if preds is not None and st.toggle("top losses first", True, key=f"{key}_toplosses"):
            from vislab import evaluation

            by_path = {p: i for i, (p, _) in enumerate(val)}
            order = [by_path[preds.paths[i]] for i in evaluation.top_losses(preds, len(val))
                     if preds.paths[i] in by_path]
        n = st.slider("How many", 1, min(max_n, len(val)), min(default_n, len(val)), key=f"{key}_n")
        picked = [val[i] for i in order[:n]]
        return [(f"{ds.report.classes[y]}: {Path(p).name}", load_image(p)) for p, y in picked]
    ups = st.file_uploader("Images", type=["jpg", "jpeg", "png", "bmp", "webp", "gif", "tif", "tiff"],
                           accept_multiple_files=True, key=f"{key}_up")
    out = []
    for up in (ups or [])[:max_n]:
        try:
            out.append((up.name, to_rgb(Image.open(up))))
        except (UnidentifiedImageError, OSError) as exc:
            st.error(f"{up.name}: not a readable image ({exc})")
    return out


@dataclass
class ViewModel:
    """A model to look inside, with what is needed to feed it and name its classes."""

    label: str
    model: object
    data_config: object
    classes: list[str]
    real_weights: bool
    arch: str = ""  # the architecture's name (a run's model may differ from the one picked now)


def class_names(name: str, num: int) -> list[str]:
    from vislab.evaluation import class_names as names

    return names(name, num)


def current_run():
    """(model, Run, Predictions or None) of the lab's run in view: a reopened one, else the latest finished
    training run of the lab (also one from before a reload or a restart); None when there is none."""
    from vislab import runs
    from pages import _jobs

    ss = st.session_state
    names = [ss.get(REOPENED), ss.get(LAST_RUN)]
    names += [j.id for j in _jobs.lab_jobs("train") if j.state in ("done", "stopped", "interrupted")]
    for name in names:
        if not name:
            continue
        folder = session_runs() / name
        if not folder.is_dir() or _jobs.jobs.Job(folder).active:
            continue
        try:
            model, run = _jobs.load_run(folder)
        except (FileNotFoundError, RuntimeError, ValueError, KeyError, OSError):
            continue
        return model, run, runs.load_predictions(folder)
    return None


def predict_saved_split(model, run):
    """Validation predictions of a run saved without them (older runs), from its split.json, once."""
    import os

    from vislab import evaluation, runs

    folder = run.path.parent if run.path.name == runs.CHECKPOINT else run.path  # an interrupted run's own folder
    split = runs.load_split(folder)
    if not split or not all(os.path.exists(p) for p, _ in split[1]):
        return None
    with model_lock(model):
        preds = evaluation.predict(model, split[1], run.data_config)
    if folder == run.path:
        runs.save_predictions(folder, preds)
    return preds


def trained_view() -> ViewModel | None:
    """The lab's fine-tuned model: a reopened run, else its latest finished run."""
    current = current_run()
    if current is None:
        return None
    model, run, _ = current
    name = run.path.parent.name if run.path.name == "checkpoint" else run.name
    return ViewModel(f"fine-tuned ({name})", model, run.data_config, run.classes, True, run.config.get("model", ""))


VIEW_CHOICE = "_models"  # the look pages' "pretrained / fine-tuned / side by side" radios end in this


def view_models(key: str, allow_both: bool = True) -> list[ViewModel]:
    """The pretrained model (its original head), the fine-tuned one, or both side by side."""
    base, info = pretrained()
    pre = ViewModel(f"pretrained {info.name}", base, info.data_config,
                    class_names(info.name, info.num_classes), info.pretrained)
    tuned = trained_view()
    options = ["pretrained"] + (["fine-tuned"] + (["side by side"] if allow_both else []) if tuned else [])
    first = 1 if tuned and tuned.arch == st.session_state[MODEL] else 0  # the latest run of the model in use
    choice = st.radio("Model", options, index=first, horizontal=True, key=f"{key}{VIEW_CHOICE}",
                      help="Train a model on the Train page (or reopen a run) to compare it with the pretrained one. "
                           "Once a run of the current model exists, the fine-tuned model is shown first.")
    chosen = {"pretrained": [pre], "fine-tuned": [tuned], "side by side": [pre, tuned]}[choice]
    for vm in chosen:
        if not vm.real_weights:
            st.warning(f"`{vm.label}` has random weights (none on this machine): what it 'looks at' means little. "
                       "Pick a model with real weights on the Model page.")
    return chosen


@st.cache_resource
def _locks() -> dict:
    return {}


def model_lock(model) -> threading.Lock:
    """Views hook into the shared pretrained model: one session at a time per model."""
    return _locks().setdefault(id(model), threading.Lock())


def set_modules_trainable(names: list[str], on: bool) -> None:
    """Freeze or thaw single modules of the working model (the Freeze page's module overrides)."""
    ss = st.session_state
    model, _ = working()
    plan: FreezePlan = ss[PLAN]
    plan.modules.update({n: on for n in names})
    if ss[STRATEGY] != "two-phase":
        ss[STRATEGY] = "custom"
    freezing.apply(model, plan)
    ss[PLAN_VERSION] = ss.get(PLAN_VERSION, 0) + 1


@st.cache_data(show_spinner="Tracing the execution order…", max_entries=8)
def layer_order(key: tuple, _model) -> list[dict]:
    from vislab import layer_order

    return layer_order.layer_table(_model, key[-1])


def find_lr(ds: Dataset, img_size: int, batch: int):
    """The LR finder on a copy of the working model and this session's data (see vislab.lr_finder)."""
    from vislab import lr_finder

    model, info = working()
    train_items, val_items = ds.split()
    with st.spinner("Sweeping learning rates…"):
        return lr_finder.for_model(model, info, train_items, val_items, img_size, batch, seed=ds.seed)


# ---- failures and clean-up ------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=16)
def _forward_seconds(key: tuple, _model) -> float:
    from vislab import views

    with model_lock(_model):
        return views.forward_seconds(_model, key[-1])


def forward_seconds(model, input_size: tuple) -> float:
    """Seconds of one image's forward pass through `model` on this machine (measured once, cached)."""
    return _forward_seconds((id(model), input_size), model)


# ---- cached forward passes of the views (a slider move must not rerun the model) -----------------------
@st.cache_data(max_entries=32, show_spinner=False)
def _view_result(key: tuple, _compute):
    return _compute()


def cached_view(kind: str, model, images: list, extra: tuple, compute):
    """`compute()` once per (view, model, images, settings); later reruns reuse the result."""
    import hashlib

    image_ids = tuple((label, hashlib.md5(img.tobytes()).hexdigest()) for label, img in images)
    last = list(model.parameters())[-1].detach()  # with id(): a new model at a recycled address differs
    model_id = (id(model), float(last.double().sum()), tuple(last.shape))
    with model_lock(model):
        return _view_result((kind, model_id, image_ids, extra), compute)


def cam_layer(model, name: str) -> str:
    """The model's default CAM layer; for a model outside the catalog that takes a probing forward pass,
    so it is found once per model, not on every rerun."""
    from vislab import cam

    return cached_view("cam_layer", model, [], (name,), lambda: cam.default_layer(model, name))
