"""What every page shares of a session: the lab's own keys, the kept settings, and widgets that follow the lab.

It imports no torch, so the first page can start drawing before the heavy libraries load. Each page names
its own widgets' keys (in the page, or in a `pages/_<page>.py` helper when another file needs them); the
keys here are the lab's: what the pages hand each other and what the lab folder keeps (`pages/_lab.py`
reads and writes them). What needs models is in `pages/_dataset.py` (the session's dataset), `_working.py`
(the cached pretrained model and the session's copy), `_runs.py` (the models the look pages show),
`_cached.py` (cached views and their locks) and `_images.py` (image pickers, thumbnails, downloads);
`pages/_jobs.py` has the background jobs.
"""

from __future__ import annotations

import streamlit as st

from vislab.models import catalog
from vislab.serving import labs

# ---- the lab's keys: what the pages hand each other (and pages/_lab.py keeps in the lab's folder) --------
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
WORKING = "working"  # (key, model, info): the session's own copy with a head for its classes
LAB = "lab_id"  # the lab of this browser session
PENDING_DATASET = "_lab_pending_dataset"  # a saved dataset to restore (needs torch: done in _dataset)
VIEW_CHOICE = "_models"  # the look pages' "pretrained / fine-tuned / side by side" radios end in this
NAME = "lab_name"  # the lab's display name (labs.clean_name: plain text; shown through labs.name_markdown)
PROJECTOR = "projector"  # projector mode on: large type, thick lines, Cividis (pages/_charts.py, _sidebar.py)

PERSISTED = (MODEL, HEAD, STRATEGY, THAW_LAST, BN, LAST_RUN, REOPENED, COMPARE_SHOWN, ZIP_FOLDER, NAME, PROJECTOR)
LAB_KEYS = frozenset((*PERSISTED, DATASET, PLAN, AUGMENT, PLAN_VERSION, WORKING, LAB, PENDING_DATASET))  # never a
# setting (LOOK_RUN is one: the look pages keep it)


def init_state() -> None:
    ss = st.session_state
    ss.setdefault(MODEL, catalog.DEFAULT_MODEL)
    ss.setdefault(HEAD, "linear")
    ss.setdefault(STRATEGY, "head")
    ss.setdefault(THAW_LAST, 1)
    ss.setdefault(BN, "eval")


def current_lab() -> labs.Lab:
    return labs.Lab(st.session_state[LAB])


# ---- kept settings: the widget values a person sets. Streamlit forgets a widget's value in a run that does
# not draw it (a visit to another page); a page marks the keys it wants kept with kept(), and they are kept
# for the session (keep_settings) and in the lab (state.json's "settings": a reload, a second tab, a restart
# show them again). The marks live in the session, so no list of every page's keys is needed: a key read
# back from a lab's settings is marked too, and stays kept before its page runs in this session.
_KEPT = "_kept_settings"  # the set of keys marked kept in this session
_FOLLOWS = "_follows_"  # + a widget key: the value it last followed (see follow())


def kept(key: str) -> str:
    """Mark `key` (a widget's, or a value a page sets for itself) as a setting to keep; returns it, so a page
    writes `st.slider(..., key=_state.kept(N))`."""
    marks = st.session_state.setdefault(_KEPT, set())
    if key not in marks:
        marks.add(key)
    return key


def kept_keys(ss) -> set[str]:
    """The keys marked kept in `ss` (st.session_state, or pages/_lab.raw_state())."""
    return set(ss[_KEPT]) if _KEPT in ss else set()


def keep_loaded(ss, settings: dict) -> None:
    """A lab's saved settings into the session, each marked kept (the lab's own keys are not settings)."""
    marks = ss[_KEPT] if _KEPT in ss else set()
    for key, value in settings.items():
        if isinstance(key, str) and key not in LAB_KEYS:
            marks.add(key)
            if (ss[key] if key in ss else None) != value:
                ss[key] = value
    ss[_KEPT] = marks


def keep_settings() -> None:
    """Before the page runs: mark every kept setting as set by the app, so Streamlit keeps it through runs that
    do not draw its widget (its documented way of keeping a widget's value across pages)."""
    ss = st.session_state
    for key in kept_keys(ss):
        if key in ss:
            ss[key] = ss[key]


def follow(key: str, value) -> None:
    """A widget that shows what the lab uses (the model, the strategy, the dataset's source) but keeps what a
    person picked until they apply it: it takes `value` when the widget has none, or when `value` changed
    since the widget last followed it (applied on another page, in another tab, by a reload). The widget
    and its mark are kept settings."""
    ss = st.session_state
    mark = kept(f"{_FOLLOWS}{kept(key)}")
    if key not in ss or mark not in ss or ss[mark] != value:
        ss[key] = value
        ss[mark] = value


def followed(key: str, value) -> None:
    """The widget `key` itself just made the lab use `value` (its page applied it): the next run must keep
    the widget as the person left it, not treat `value` as a change made elsewhere."""
    st.session_state[kept(f"{_FOLLOWS}{key}")] = value


def clamp(key: str, low, high) -> None:
    """A kept slider or number whose range depends on the data (how many images, layers): into the range it has
    now, before the widget is drawn (Streamlit refuses a value outside it)."""
    ss = st.session_state
    if key in ss and isinstance(ss[key], (int, float)) and not isinstance(ss[key], bool):
        ss[key] = min(max(ss[key], low), high)


if __name__ == "__main__":  # opened as a page of its own (Streamlit's old pages-folder mode)
    from pages import _route

    _route.through_app()
