"""The lab of this link: found from the URL, its saved state read into the session, and the session's
choices written back after every script run.

A browser session works in a *lab* (vislab.serving.labs): its id is in the URL (`?lab=<32 hex digits>`), and
the lab's keys of pages/_state.py, its plan, augmentation, dataset and kept settings are written to the lab's
folder at the end of every script run and read back by any session that opens the same link (a reload, a
second tab, the same link after a server restart).
"""

from __future__ import annotations

import json

import streamlit as st

from pages import _state
from pages._state import (AUGMENT, COMPARE_SHOWN, DATASET, HEAD, LAB, LAST_RUN, MODEL, NAME, PENDING_DATASET,
                          PERSISTED, PLAN, PLAN_VERSION, PROJECTOR, REOPENED, WORKING, ZIP_FOLDER)
from vislab.serving import labs

_SAVED = "_lab_saved"  # the JSON last written to / read from the lab, to write only on change
_MTIME = "_lab_mtime"  # state.json's mtime when last read or written (another tab's change shows up)
_DATASET_SAVED = "_lab_dataset"  # the dataset.json content last written / read (id of the report)
NEW_LAB_AFTER_ERROR = "new_lab_after_error"  # the button under a lab link that cannot be opened


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
        lab = _state.current_lab()
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
        elif key in (LAST_RUN, REOPENED, COMPARE_SHOWN, ZIP_FOLDER, NAME, PROJECTOR):  # another lab's, not this one's
            ss.pop(key, None)
    _state.init_state()
    _state.keep_loaded(ss, state.get("settings") or {})
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


def _settings_of(ss) -> dict:
    """The kept settings of `ss` that are plain JSON (a tuple as a list)."""
    out = {}
    for key in sorted(_state.kept_keys(ss)):
        if key not in ss:
            continue
        value = ss[key]
        if isinstance(value, tuple):
            value = list(value)
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        out[key] = value
    return out


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
        from streamlit.runtime.state.session_state_proxy import get_session_state  # Streamlit's internals

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


if __name__ == "__main__":  # opened as a page of its own (Streamlit's old pages-folder mode)
    from pages import _route

    _route.through_app()
