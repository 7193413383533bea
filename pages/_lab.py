"""The one place that knows Streamlit: cached resources, session state, the training job, the sidebar.

Pages import from here and from `vislab`; no torch math happens in a page. The pretrained model is cached
once per process (`st.cache_resource`) and never trained in place: each browser session works on its own
copy, kept in `st.session_state`.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st
import torch

from pages._state import (BN, DATASET, HEAD, JOB, MODEL, PLAN, PLOTLY_CONFIG, SESSION_ID, STRATEGY, THAW_LAST,  # noqa: F401
                          WORKING, chart, clean_work_dirs, init_state, job_label, sidebar)
from vislab import catalog, data, experiment, freezing, heads, models, paths, training, weights
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


def session_runs() -> Path:
    """This browser session's runs: other people's runs on a shared lab are not listed or opened."""
    return paths.runs_dir() / st.session_state[SESSION_ID]


def session_dir() -> Path:
    """This browser session's own scratch folder (uploads, extracted zips)."""
    folder = paths.work_dir() / st.session_state[SESSION_ID]
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


def working():
    """(model, info): this session's copy of the pretrained model, with a head for its dataset's classes."""
    ss = st.session_state
    key = (ss[MODEL], ss[HEAD], num_classes(), _weights_key(ss[MODEL]), ss[STRATEGY] == "scratch")
    cached = ss.get(WORKING)
    if cached is None or cached[0] != key:
        ds = ss.get(DATASET)
        training.seed_everything(ds.seed if ds else 0)  # the new head's init is reproducible too
        if ss[STRATEGY] == "scratch":
            model, info = models.create_model(ss[MODEL], num_classes(), ss[HEAD], "random")
        else:
            base, base_info = pretrained()
            model = training.clone_model(base)
            heads.swap_head(model, num_classes(), ss[HEAD])
            info = models.ModelInfo(base_info.name, base_info.source, heads.head_name(model), ss[HEAD],
                                    num_classes(), base_info.data_config, base_info.weights, list(base_info.notes))
        ss[WORKING] = (key, model, info)
    _, model, info = ss[WORKING]
    plan = ss.get(PLAN)
    names = {s.name for s in freezing.stages(model)}
    if plan is None or set(plan.trainable) != names:  # no plan yet, or one for another model
        strategy = ss[STRATEGY] if ss[STRATEGY] in freezing.STRATEGIES else "head"
        bn = None if strategy == "scratch" else ss[BN]
        ss[PLAN] = freezing.preset(model, strategy, max(1, min(ss[THAW_LAST], len(names) - 1)), bn)[-1]
    freezing.apply(model, ss[PLAN])
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


# ---- the training job: a thread per session, polled by the Train page --------------------------------
@dataclass
class TrainJob:
    spec: experiment.Spec
    total_epochs: int
    stop: threading.Event = field(default_factory=threading.Event)
    status: str = "running"  # running | done | stopped | error
    message: str = ""
    epoch: int = 0
    batch: int = 0
    batches: int = 0
    loss: float = 0.0
    phase: str = ""
    metrics: list[dict] = field(default_factory=list)
    cache: list[str] = field(default_factory=list)  # per phase: "features cached: prefix run once, N s" or why not
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None
    result: experiment.Result | None = None
    predictions: object = None  # evaluation.Predictions on the validation split
    thread: threading.Thread | None = None

    def on_event(self, e: training.Event) -> None:
        if e.kind == "batch":
            self.epoch, self.batch, self.batches, self.loss, self.phase = e.epoch, e.batch, e.batches, e.loss, e.phase
        elif e.kind == "epoch":
            self.metrics.append(e.metrics)
        elif e.kind == "cache":
            self.cache.append(e.message)
        elif e.kind == "end" and e.message not in ("done", "stopped"):
            self.message = e.message

    @property
    def running(self) -> bool:
        return self.status == "running"


def start_training(spec: experiment.Spec, ds: Dataset) -> TrainJob:
    """Train a copy of the working model (its plan as the last phase) in a background thread."""
    from vislab import evaluation

    model, info = working()
    plan = st.session_state[PLAN]
    model = training.clone_model(model)  # the working copy keeps its (pretrained) weights for the next run
    info = models.ModelInfo(info.name, info.source, info.head, info.head_kind, info.num_classes,
                            info.data_config.with_size(spec.img_size), info.weights, list(info.notes))
    if spec.strategy == "two-phase":
        head_only = freezing.plan_for(model, set(), "eval")
        phases = training.phases_for("two-phase", [head_only, plan], spec.train.epochs, spec.train.lr,
                                     spec.train.phase2_lr_factor)
    else:
        phases = [training.Phase(plan, spec.train.epochs, spec.train.lr, spec.strategy)]
    job = TrainJob(spec, sum(p.epochs for p in phases))
    run_dir = session_runs() / f"{time.strftime('%Y%m%d-%H%M%S')}_{spec.model}_{spec.strategy}"
    report = ds.used

    def work():
        try:
            result = experiment.train(spec, report, run_dir, job.on_event, job.stop, prepared=(model, info, phases))
            job.result = result
            if result.history.epochs:
                job.predictions = evaluation.predict(result.model.cpu(), result.val_items, info.data_config)
            job.status = "stopped" if result.history.stopped else "done"
        except torch.OutOfMemoryError:
            job.status, job.message = "error", "out of memory: use a smaller batch size or image size"
        except ValueError as exc:  # bad settings the library explains (a size the model cannot take, ...)
            job.status, job.message = "error", str(exc)
        except Exception as exc:  # shown on the page; the app and the session survive
            job.status, job.message = "error", f"{type(exc).__name__}: {exc}"
        finally:
            job.finished = time.perf_counter()

    job.thread = threading.Thread(target=work, name=f"vislab-train-{st.session_state[SESSION_ID]}", daemon=True)
    job.thread.start()
    st.session_state[JOB] = job
    return job


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
        job = st.session_state.get(JOB)
        order = list(range(len(val)))
        if job and job.predictions is not None and st.toggle("top losses first", True, key=f"{key}_toplosses"):
            from vislab import evaluation

            by_path = {p: i for i, (p, _) in enumerate(val)}
            order = [by_path[job.predictions.paths[i]] for i in evaluation.top_losses(job.predictions, len(val))
                     if job.predictions.paths[i] in by_path]
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


def class_names(name: str, num: int) -> list[str]:
    from vislab.evaluation import class_names as names

    return names(name, num)


def trained_view() -> ViewModel | None:
    """The session's fine-tuned model: the last finished run, or a reopened one."""
    ss = st.session_state
    job = ss.get(JOB)
    if job and job.result and not job.running and job.result.history.epochs:
        r = job.result
        return ViewModel(f"fine-tuned ({r.run_dir.name if r.run_dir else 'last run'})", r.model.cpu().eval(),
                         r.info.data_config, r.classes, True)
    if ss.get("reopened"):
        m, run, _ = ss["reopened"]
        return ViewModel(f"fine-tuned ({run.name})", m, run.data_config, run.classes, True)
    return None


def view_models(key: str, allow_both: bool = True) -> list[ViewModel]:
    """The pretrained model (its original head), the fine-tuned one, or both side by side."""
    base, info = pretrained()
    pre = ViewModel(f"pretrained {info.name}", base, info.data_config,
                    class_names(info.name, info.num_classes), info.pretrained)
    tuned = trained_view()
    options = ["pretrained"] + (["fine-tuned"] + (["side by side"] if allow_both else []) if tuned else [])
    choice = st.radio("Model", options, horizontal=True, key=f"{key}_models",
                      help="Train a model on the Train page (or reopen a run) to compare it with the pretrained one")
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
    ss["plan_version"] = ss.get("plan_version", 0) + 1


@st.cache_data(show_spinner="Tracing the execution order…", max_entries=8)
def layer_order(key: tuple, _model) -> list[dict]:
    from vislab import export

    return export.layer_table(_model, key[-1])


# ---- one Netron server per browser session --------------------------------------------------------------
@st.cache_resource
def _netron_servers() -> dict:
    """session id -> NetronServer, shared by the process so servers of closed sessions can be stopped."""
    import atexit

    from vislab import netron_server

    atexit.register(netron_server.stop_all)
    return {}


def _prune_netron() -> None:
    """Stop the servers of browser sessions that have ended."""
    from streamlit import runtime

    servers = _netron_servers()
    if not runtime.exists():
        return
    rt = runtime.get_instance()
    for sid in list(servers):
        if not rt.is_active_session(sid):
            servers.pop(sid).stop()


def session_key() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx else st.session_state[SESSION_ID]


def netron_for(file: Path):
    """Start (or replace) this session's Netron server on `file`."""
    from vislab import netron_server

    _prune_netron()
    servers = _netron_servers()
    old = servers.pop(session_key(), None)
    if old is not None:
        old.stop()
    server = netron_server.start(file)
    servers[session_key()] = server
    return server


def current_netron():
    server = _netron_servers().get(session_key())
    return server if server is not None and server.running else None


def find_lr(ds: Dataset, img_size: int, batch: int):
    """The LR finder on a copy of the working model and this session's data (see vislab.lr_finder)."""
    from vislab import lr_finder
    from vislab.transforms import eval_transform

    model, info = working()
    model = training.clone_model(model)
    cfg = info.data_config.with_size(img_size)
    models.fit_input_size(model, info.name, cfg.size)  # a ViT resamples; a fixed-size model says so
    train_items, val_items = ds.split()
    tf = eval_transform(cfg)
    loaders = training.make_loaders(data.ImageDataset(train_items, tf), data.ImageDataset(val_items, tf),
                                    training.TrainConfig(batch_size=batch), torch.device("cpu"))
    with st.spinner("Sweeping learning rates…"):
        return lr_finder.lr_find(model, *loaders, device="auto", steps=100, seed=ds.seed)


# ---- failures and clean-up ------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=16)
def _forward_seconds(key: tuple, _model) -> float:
    import torch

    x = torch.zeros(16, *key[-1])  # (16, C, H, W)
    with model_lock(_model), torch.no_grad():
        was = _model.training
        _model.eval()
        _model(x[:2])  # warm-up
        start = time.perf_counter()
        _model(x)
        _model.train(was)
    return (time.perf_counter() - start) / 16


def forward_seconds(model, input_size: tuple) -> float:
    """Seconds of one image's forward pass through `model` on this machine (measured once, cached)."""
    return _forward_seconds((id(model), input_size), model)


# ---- the comparison job (Compare page) -----------------------------------------------------------------
@dataclass
class CompareJob:
    configs: list
    epochs: int
    stop: threading.Event = field(default_factory=threading.Event)
    status: str = "running"  # running | done | stopped | error
    message: str = ""
    current: str = ""
    done_runs: int = 0
    epoch: int = 0
    batch: int = 0
    batches: int = 0
    rows: list = field(default_factory=list)
    folder: Path | None = None
    thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.status == "running"

    def on_event(self, name: str, e) -> None:
        self.current = name
        if e.kind == "batch":
            self.epoch, self.batch, self.batches = e.epoch, e.batch, e.batches
        elif e.kind == "end":
            self.done_runs += 1


def start_compare(configs: list, ds: Dataset, epochs: int, img_size: int | None, batch: int) -> CompareJob:
    from vislab import compare

    ss = st.session_state
    job = CompareJob(configs, epochs)
    job.folder = session_runs() / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    report = ds.used
    name = ss[MODEL]

    def work():
        try:
            job.rows = compare.run(name, report, configs, epochs, job.folder, img_size=img_size, batch_size=batch,
                                   seed=ds.seed, on_event=job.on_event, stop=job.stop)
            job.status = "stopped" if job.stop.is_set() else "done"
        except Exception as exc:  # shown on the page
            job.status, job.message = "error", f"{type(exc).__name__}: {exc}"

    job.thread = threading.Thread(target=work, name="vislab-compare", daemon=True)
    job.thread.start()
    ss["compare_job"] = job
    return job


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
