"""The light part of the Streamlit layer: the lab of this link, session keys, the sidebar and chart helper.

It imports no torch, so the first page can start drawing before the heavy libraries load. What needs models
is in `pages/_dataset.py` (the session's dataset), `_working.py` (the cached pretrained model and the
session's copy), `_runs.py` (the models the look pages show), `_cached.py` (cached views and their locks)
and `_images.py` (image pickers, thumbnails, downloads); `pages/_jobs.py` has the background jobs.

A browser session works in a *lab* (vislab.serving.labs): its id is in the URL (`?lab=<32 hex digits>`), and the
choices below are written to the lab's folder at the end of every script run and read back by any session
that opens the same link (a reload, a second tab, the same link after a server restart).
"""

from __future__ import annotations

import json

import streamlit as st

from vislab.models import catalog
from vislab.serving import labs
from vislab import _paths as paths

# ---- session state keys (every key a page reads, writes or gives a widget lives here) -------------------
MODEL = "model_name"  # catalog or any timm / torchvision name
HEAD = "head_kind"  # "linear" | "mlp" | "attention" (heads.HEAD_KINDS)
DATASET = "dataset"  # _dataset.Dataset, or absent
PLAN = "plan"  # FreezePlan of the working model (a dict while it waits to be rebuilt, after a reload)
STRATEGY = "strategy"  # the preset the plan came from, or "custom"
THAW_LAST = "thaw_last"
BN = "bn_thawed"
AUGMENT = "augment"  # transforms.Augment of the Data page
ZIP_FOLDER = "zip_folder"  # the extracted zip in use (inside the lab's data folder)
PLAN_VERSION = "plan_version"  # bumped when the plan changes, so the Freeze page's widgets redraw
LAST_RUN = "last_run"  # name of the lab's run shown as "the current run" (its folder under runs/)
REOPENED = "reopened"  # name of a run reopened from the list
LOOK_RUN = "look_run"  # the run of the model in use that the look pages show (picked on any of them)
COMPARE_SHOWN = "compare_shown"  # name of the comparison shown on the Compare page
LR_SWEEP = "lr_sweep"  # the LR finder's last result
WORKING = "working"  # (key, model, info): the session's own copy with a head for its classes
LAB = "lab_id"  # the lab of this browser session
_SAVED = "_lab_saved"  # the JSON last written to / read from the lab, to write only on change
_MTIME = "_lab_mtime"  # state.json's mtime when last read or written (another tab's change shows up)
_DATASET_SAVED = "_lab_dataset"  # the dataset.json content last written / read (id of the report)
PENDING_DATASET = "_lab_pending_dataset"  # a saved dataset to restore (needs torch: done in _dataset)
VIEW_CHOICE = "_models"  # the look pages' "pretrained / fine-tuned / side by side" radios end in this
EXPORT_RESULT = "export_result"  # the Export page's last ExportResult (file, check, warnings)
CAM_OUT = "cam_out"  # the CAM page's last computed panels, shown until the inputs change
FEAT_ACTS_PREFIX = "feat_acts_"  # + model index: the Features page's activations of each model shown
TRAIN_LR_NEXT = "train_lr_next"  # the LR finder's suggestion, put into the learning-rate box on the next run
SHOWN_ACTIVE = "_shown_active"  # the training job the Train page is following (its end redraws the page)
COMPARE_ACTIVE = "_compare_active"  # the comparison the Compare page is following (its end shows it)
ZIP_READ_ID = "_zip_read"  # file id of the uploaded zip last read (a new file is read at once)

# ---- widget keys, by page: a widget keeps its value in st.session_state under its key; `_PREFIX` keys
# are followed by an index or a name (one widget per class, per image, per model)
# pages/home.py
ADV_SIZE = "adv_size"
ADV_SIM = "adv_sim"
ADV_SIZE_PICKED = "adv_size_picked"  # True once a person picked a size (until then it follows the dataset's)
MATRIX = "matrix"
# pages/model.py
WEIGHTS_UPLOAD = "weights_upload"
DO_IMPORT = "do_import"
PARAMS_CHART = "params_chart"
# pages/data.py
DATA_SOURCE = "data_source"
SAMPLE_PER_CLASS = "sample_per_class"
ZIP_UPLOAD = "zip_upload"
N_UPLOAD_CLASSES = "n_upload_classes"
CLS_NAME_PREFIX = "cls_name_"
CLS_FILES_PREFIX = "cls_files_"
VAL_FRAC = "val_frac"
SPLIT_SEED = "split_seed"
BALANCE = "balance"
PREVIEW_CLASSES = "preview_classes"
ZIP_READ_AGAIN = "zip_read"
AUG_PREFIX = "aug_"  # + an Augment field: the augmentation toggles and the number of cached views
# pages/train.py
CURVES_PREFIX = "curves_"
CM_PREFIX = "cm_"
PC_PREFIX = "pc_"
CLASSIFY_PREFIX = "classify_"
TRAIN_EPOCHS = "train_epochs"
TRAIN_BATCH = "train_batch"
TRAIN_LR = "train_lr"
TRAIN_LAYER_DECAY = "train_layer_decay"
TRAIN_STOP = "train_stop"
TRAIN_SIZE_PREFIX = "train_size_"  # + the model's own size: the image-size slider (its options follow the model)
TRAIN_DEVICE = "train_device"
TRAIN_FACTOR = "train_phase2_factor"
TRAIN_START_REFUSED = "train_start_refused"  # why the Start callback could not queue the job (a second tab)
LR_SWEEP_CHART = "lr_sweep_chart"
LIVE_CURVES = "live_curves"
REOPEN_PICK = "reopen_pick"
RESUME_EPOCHS = "resume_epochs"
# pages/cam.py
CAM_METHODS = "cam_methods"
CAM_LAYER = "cam_layer"
CAM_MORE_LAYERS = "cam_more_layers"
CAM_TARGET_MODE = "cam_target_mode"
CAM_TOPK_CLASS = "cam_topk_class"
CAM_CLASS = "cam_class"
CAM_OPACITY = "cam_opacity"
CAM_COLOURS = "cam_colours"
CAM_ROAD = "cam_road"
CAM_STOP = "cam_stop"
TOPK_PREFIX = "topk_"
CAM_PREFIX = "cam_"
# pages/features.py
FEAT_LAYER = "feat_layer"
FEAT_N = "feat_n"
FEAT_PREFIX = "feat_"
# pages/se.py
SE_HM_PREFIX = "se_hm_"
SE_BLOCK = "se_block"
SE_K = "se_k"
SE_BARS = "se_bars"
SE_MAPS = "se_maps"
SE_CLASS = "se_class"
# pages/compare.py
COMPARE_CONFIGS = "compare_configs"
COMPARE_CUSTOM = "compare_custom"
COMPARE_EPOCHS = "compare_epochs"
COMPARE_SIZE = "compare_size"
COMPARE_BATCH = "compare_batch"
COMPARE_STOP = "compare_stop"
COMPARE_RELOAD = "compare_reload"
CMP_CURVES = "cmp_curves"
CMP_CM_PREFIX = "cmp_cm_"
CMP_CAM = "cmp_cam"
CMP_LAYER = "cmp_layer"
CMP_MAPS = "cmp_maps"
# pages/export.py
EXPORT_FMT = "export_fmt"
EXPORT_DOWNLOAD = "export_download"
LAYER_TABLE = "layer_table"
# pages/concepts.py
CONCEPT_GAP_MODEL = "concept_gap_model"
CONCEPT_C = "concept_c"
CONCEPT_RF = "concept_rf"
CONCEPT_DEPTH = "concept_depth"
CONCEPT_RES = "concept_res"
CONCEPT_SCORES = "concept_scores"
CONCEPT_ATTN = "concept_attn"
# pages/_images.py
DL_PREFIX = "dl-"
# pages/attention.py and pages/freeze.py (they still write these keys out; the constants are ready for them)
ATTN_FUSION = "attn_fusion"
ATTN_DISCARD = "attn_discard"
ATTN_OPACITY = "attn_opacity"
ATTN_MAIN = "attn_main"
ATTN_LAYER = "attn_layer"
ATTN_HEADS = "attn_heads"
PRESET_CHOICE = "preset_choice"
PRESET_THAW = "preset_thaw"
PRESET_BN = "preset_bn"
HEAD_CHOICE = "head_choice"
TRAIN_STAGE_PREFIX = "train_"  # + stage name + plan version: a stage's trainable toggle
BN_STAGE_PREFIX = "bn_"  # + stage name + plan version: a stage's BatchNorm mode
MODULES_PREFIX = "modules_"  # + plan version: the single-module overrides
DIAGRAM = "diagram"
# app.py and this module
NEW_LAB_AFTER_ERROR = "new_lab_after_error"
NEW_LAB_BUTTON = "new_lab"  # app.py's sidebar button

LAYERS_OUT = "layers_out"  # (model label, units.UnitPatches, image labels) of the last scan
LAYERS_VIS = "layers_vis"  # (model label, featurevis.Visualisation) of the last feature visualisation
LAYERS_CHANNELS = "layers_channels"
LAYERS_K = "layers_k"
LAYERS_MODE = "layers_mode"
LAYERS_N = "layers_n"
LAYERS_N_IMG = "layers_n_img"
LAYERS_SRC = "layers_src"
LAYERS_STAGES = "layers_stages"
LAYERS_STOP = "layers_stop"
LAYERS_VIS_CHANNEL = "layers_vis_channel"
LAYERS_VIS_GO = "layers_vis_go"
LAYERS_VIS_SIZE = "layers_vis_size"
LAYERS_VIS_STAGE = "layers_vis_stage"
LAYERS_VIS_STEPS = "layers_vis_steps"
LAYERS_VIS_STOP = "layers_vis_stop"

PERSISTED = (MODEL, HEAD, STRATEGY, THAW_LAST, BN, LAST_RUN, REOPENED, COMPARE_SHOWN, ZIP_FOLDER)

# pages/model.py's picker (it follows the model in use: see follow())
MODEL_PICK = "model_pick"
MODEL_TYPED = "model_typed"

# ---- settings: the widget values a person sets. Streamlit forgets a widget's value in a run that does not
# draw it (a visit to another page); these are kept for the session (keep_settings) and in the lab
# (state.json's "settings": a reload, a second tab, a restart show them again).
LOOK_PAGES = ("cam", "feat", "attn", "se", "export", "layers")  # the prefixes of the look pages' pickers
SETTINGS = frozenset((
    ADV_SIZE, ADV_SIM, ADV_SIZE_PICKED,
    DATA_SOURCE, SAMPLE_PER_CLASS, N_UPLOAD_CLASSES, VAL_FRAC, SPLIT_SEED, PREVIEW_CLASSES,
    MODEL_PICK, MODEL_TYPED, LOOK_RUN,
    PRESET_CHOICE, PRESET_THAW, PRESET_BN, HEAD_CHOICE,
    TRAIN_EPOCHS, TRAIN_BATCH, TRAIN_LR, TRAIN_LAYER_DECAY, TRAIN_DEVICE, TRAIN_FACTOR, RESUME_EPOCHS, REOPEN_PICK,
    COMPARE_CUSTOM, COMPARE_EPOCHS, COMPARE_SIZE, COMPARE_BATCH, COMPARE_RELOAD, CMP_LAYER,
    CAM_METHODS, CAM_LAYER, CAM_MORE_LAYERS, CAM_TARGET_MODE, CAM_TOPK_CLASS, CAM_CLASS, CAM_OPACITY, CAM_COLOURS,
    CAM_ROAD,
    SE_BLOCK, SE_K,
    ATTN_FUSION, ATTN_DISCARD, ATTN_OPACITY, ATTN_LAYER,
    FEAT_LAYER, FEAT_N,
    LAYERS_STAGES, LAYERS_MODE, LAYERS_N, LAYERS_CHANNELS, LAYERS_K, LAYERS_SRC, LAYERS_N_IMG, LAYERS_VIS_STAGE,
    LAYERS_VIS_CHANNEL, LAYERS_VIS_SIZE, LAYERS_VIS_STEPS,
    EXPORT_FMT,
    CONCEPT_GAP_MODEL, CONCEPT_C, CONCEPT_DEPTH,
    *(f"{p}{s}" for p in LOOK_PAGES for s in ("_src", "_photos", "_toplosses", "_count", VIEW_CHOICE)),
))
_FOLLOWS = "_follows_"  # + a widget key: the value it last followed (see follow())
SETTING_PREFIXES = (CLS_NAME_PREFIX, TRAIN_SIZE_PREFIX, AUG_PREFIX, _FOLLOWS)  # + an index, a size, a widget key


def is_setting(key: str) -> bool:
    return key in SETTINGS or any(key.startswith(p) and key != p for p in SETTING_PREFIXES)


def keep_settings() -> None:
    """Before the page runs: mark every setting as set by the app, so Streamlit keeps it through runs that do
    not draw its widget (its documented way of keeping a widget's value across pages)."""
    ss = st.session_state
    for key in [k for k in ss.keys() if isinstance(k, str) and is_setting(k)]:
        ss[key] = ss[key]


def follow(key: str, value) -> None:
    """A widget that shows what the lab uses (the model, the strategy, the dataset's source) but keeps what a
    person picked until they apply it: it takes `value` when the widget has none, or when `value` changed
    since the widget last followed it (applied on another page, in another tab, by a reload)."""
    ss = st.session_state
    mark = f"{_FOLLOWS}{key}"
    if key not in ss or mark not in ss or ss[mark] != value:
        ss[key] = value
        ss[mark] = value


def followed(key: str, value) -> None:
    """The widget `key` itself just made the lab use `value` (its page applied it): the next run must keep
    the widget as the person left it, not treat `value` as a change made elsewhere."""
    st.session_state[f"{_FOLLOWS}{key}"] = value


def clamp(key: str, low, high) -> None:
    """A kept slider or number whose range depends on the data (how many images, layers): into the range it has
    now, before the widget is drawn (Streamlit refuses a value outside it)."""
    ss = st.session_state
    if key in ss and isinstance(ss[key], (int, float)) and not isinstance(ss[key], bool):
        ss[key] = min(max(ss[key], low), high)


def _settings_of(ss) -> dict:
    out = {}
    keys = ss.filtered_state.keys() if hasattr(ss, "filtered_state") else ss.keys()  # raw_state() or the proxy
    for key in list(keys):
        if isinstance(key, str) and is_setting(key):
            value = ss[key]
            if isinstance(value, tuple):
                value = list(value)
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                continue
            out[key] = value
    return out


def init_state() -> None:
    ss = st.session_state
    ss.setdefault(MODEL, catalog.DEFAULT_MODEL)
    ss.setdefault(HEAD, "linear")
    ss.setdefault(STRATEGY, "head")
    ss.setdefault(THAW_LAST, 1)
    ss.setdefault(BN, "eval")


# ---- the lab of this link ----------------------------------------------------------------------------------
def current_lab() -> labs.Lab:
    return labs.Lab(st.session_state[LAB])


def open_lab() -> None:
    """Find this session's lab from the URL (or start one), and load its saved choices when they are new to
    this session. A malformed, unknown or damaged lab link stops the page with a message and a fresh lab."""
    ss = st.session_state
    wanted = st.query_params.get("lab")
    if wanted is None and ss.get(LAB):  # a page switch dropped the query string: put it back
        st.query_params["lab"] = ss[LAB]
        wanted = ss[LAB]
    if wanted is None:
        lab = labs.create()
        st.query_params["lab"] = lab.id
        _adopt(lab, {})
        return
    if ss.get(LAB) == wanted:
        lab = current_lab()
        if lab.state_mtime() != ss.get(_MTIME):  # another tab (or server) changed it: read it again
            try:
                _adopt(lab, lab.read_state())
            except labs.LabError as exc:
                _refuse(str(exc))
        return
    try:
        lab = labs.open_lab(wanted)
        state = lab.read_state()
    except labs.LabError as exc:
        _refuse(str(exc))
        return
    _adopt(lab, state)


def _refuse(message: str) -> None:
    st.error(f"**This lab link cannot be opened.** {message}")
    st.caption("Nothing was read or written for it. A new lab starts empty; labs you created are under their "
               "own links.")
    if st.button("Start a new lab", type="primary", key=NEW_LAB_AFTER_ERROR):
        lab = labs.create()
        st.session_state.clear()
        st.query_params.clear()
        st.query_params["lab"] = lab.id
        st.rerun()
    st.stop()


def new_lab() -> None:
    """The sidebar's "New lab": a fresh, empty lab in this tab (the old one stays under its own link)."""
    lab = labs.create()
    keep = {k: v for k, v in st.session_state.items() if k.startswith("FormSubmitter")}
    st.session_state.clear()
    st.session_state.update(keep)
    st.query_params.clear()
    st.query_params["lab"] = lab.id


def _adopt(lab: labs.Lab, state: dict) -> None:
    """Make `lab` this session's and its saved `state` the session's choices."""
    ss = st.session_state
    changed_model = any(state.get(k, ss.get(k)) != ss.get(k) for k in (MODEL, HEAD))
    ss[LAB] = lab.id
    for key in PERSISTED:
        if key in state:
            ss[key] = state[key]
        elif key in (LAST_RUN, REOPENED, COMPARE_SHOWN, ZIP_FOLDER):
            ss.pop(key, None)
    init_state()
    for key, value in (state.get("settings") or {}).items():
        if isinstance(key, str) and is_setting(key) and ss.get(key) != value:
            ss[key] = value
    if changed_model:
        ss.pop(WORKING, None)
    if state.get("plan"):
        ss[PLAN] = state["plan"]  # a dict: _working.working() rebuilds the FreezePlan (needs torch)
        ss[PLAN_VERSION] = ss.get(PLAN_VERSION, 0) + 1
    if state.get("augment") is not None:
        ss[AUGMENT] = ("dict", state["augment"])  # rebuilt by _dataset.restore() (transforms imports torch)
    ds = state.get("dataset")
    if ds and json.dumps(ds, sort_keys=True) != ss.get(_DATASET_SAVED):
        ss[PENDING_DATASET] = ds
    elif not ds:
        ss.pop(DATASET, None)
        ss.pop(PENDING_DATASET, None)
    ss[_SAVED] = json.dumps(state_of(ss, state.get("dataset")), sort_keys=True)
    ss[_DATASET_SAVED] = json.dumps(ds, sort_keys=True) if ds else None
    ss[_MTIME] = lab.state_mtime()


def _get(ss, key, default=None):
    return ss[key] if key in ss else default


def state_of(ss, dataset: dict | None = None) -> dict:
    """What a lab keeps of a session: small, plain JSON."""
    out = {k: ss[k] for k in PERSISTED if k in ss}
    plan = _get(ss, PLAN)
    if plan is not None:
        out["plan"] = plan if isinstance(plan, dict) else plan.to_dict()
    aug = _get(ss, AUGMENT)
    if aug is not None:
        out["augment"] = aug[1] if isinstance(aug, tuple) else aug.to_dict()
    if dataset is not None:
        out["dataset"] = dataset
    settings = _settings_of(ss)
    if settings:
        out["settings"] = settings
    return out


def raw_state():
    """The session's state without Streamlit's yield checks. After a page calls `st.stop()`, every access
    through `st.session_state` raises StopException again, so app.py's `finally` could not save the lab of a
    page that stopped early (the Data page before a dataset, the SE page with a non-SE model). Falls back to
    `st.session_state` where Streamlit's internals differ."""
    try:
        from streamlit.runtime.state.session_state_proxy import get_session_state

        raw = get_session_state()._state
        raw[LAB] if LAB in raw else None  # noqa: B018 - the mapping protocol this module uses
        return raw
    except Exception:
        return st.session_state


def persist(ss=None) -> None:
    """Write the session's choices to its lab when they changed (called at the end of every script run)."""
    ss = st.session_state if ss is None else ss
    if not _get(ss, LAB):
        return
    lab = labs.Lab(ss[LAB])
    ds = _get(ss, DATASET)
    dataset = None
    if ds is not None:
        dataset = ds.to_state(lab)
    elif _get(ss, PENDING_DATASET):
        dataset = ss[PENDING_DATASET]
    state = state_of(ss, dataset)
    text = json.dumps(state, sort_keys=True)
    if text == _get(ss, _SAVED):
        return
    if not lab.folder.is_dir():  # removed by age while open, or by hand: start it again under the same id
        lab.folder.mkdir(parents=True, exist_ok=True)
    lab.write_state(state)
    ss[_SAVED] = text
    ss[_DATASET_SAVED] = json.dumps(dataset, sort_keys=True) if dataset else None
    ss[_MTIME] = lab.state_mtime()


PLOTLY_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


def chart(fig, key: str | None = None) -> None:
    """A plotly chart; its toolbar's camera button downloads it as PNG (for slides)."""
    st.plotly_chart(fig, width="stretch", config=PLOTLY_CONFIG, key=key)


def sidebar(where) -> None:
    """The current model, dataset and strategy, in the given sidebar container (the run line is live: see
    app.py)."""
    ss = st.session_state
    ds = ss.get(DATASET)
    pending = ss.get(PENDING_DATASET)
    data_line = (f"{ds.label} · {len(ds.used.items)} images" if ds else
                 f"{pending.get('label', 'saved dataset')}" if pending else "— (pick on Data)")
    where.markdown("### Current lab")
    where.markdown(
        f"**Model** `{ss[MODEL]}` ({ss[HEAD]} head)  \n"
        f"**Data** {data_line}  \n"
        f"**Strategy** {ss[STRATEGY]}"
    )
    if ss.get(LAB):
        where.caption(f"Lab `{ss[LAB][:8]}…` — bookmark this page's address to come back to it (it holds your "
                      "data, settings and runs, also after a server restart).")


@st.cache_resource
def clean_work_dirs() -> bool:
    """Once per app start: remove the scratch folders (not the CLI's, not the exported prefixes), and labs
    unused for longer than `VISLAB_LAB_DAYS` (default 30) days."""
    import shutil

    root = paths.work_dir()
    if root.is_dir():
        for child in root.iterdir():
            if child.is_dir() and child.name not in paths.KEPT_WORK_DIRS:  # the CLI's, the engines' exports
                shutil.rmtree(child, ignore_errors=True)
    labs.clean_old()
    return True


if __name__ == "__main__":  # opened as a page of its own (Streamlit's old pages-folder mode)
    from pages import _route

    _route.through_app()
