"""The session's working model: the pretrained model cached once per process (`st.cache_resource`, shared,
never trained in place) and this session's own copy with a head for its dataset's classes and its freeze
plan, kept in `st.session_state`; switching models and presets, and the LR finder on that copy."""

from __future__ import annotations

import json

import streamlit as st

from pages._dataset import Dataset
from pages._state import BN, DATASET, HEAD, MODEL, PLAN, PLAN_VERSION, STRATEGY, THAW_LAST, VIEW_CHOICE, WORKING
from vislab.models import catalog, freezing, heads, factory as models, stages, weights
from vislab.training import experiment, loop as training
from vislab.models.freezing import FreezePlan


def _weights_key(name: str) -> str:
    """Changes when the weights on disk for `name` change (an import), so the cache reloads."""
    try:
        status = weights.status(name, catalog.source_of(name))
    except ValueError:
        return "unknown"
    if status.path is None:
        return "random"
    return f"{status.path}:{status.path.stat().st_mtime_ns}"


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


def num_classes() -> int:
    ds = st.session_state.get(DATASET)
    return len(ds.report.classes) if ds else 2


def working_spec(strategy: str | None = None) -> experiment.Spec:
    """The session's choices as an experiment spec (what the working model and a job are built from)."""
    ss = st.session_state
    ds = ss.get(DATASET)
    strategy = strategy or ss[STRATEGY]
    return experiment.Spec(model=ss[MODEL], strategy=strategy if strategy in freezing.STRATEGIES else "custom",
                           thaw_last=int(ss[THAW_LAST]), bn=None if strategy == "scratch" else ss[BN],
                           head=ss[HEAD], weights="auto", val_frac=ds.val_frac if ds else 0.2,
                           train=training.TrainConfig(seed=ds.seed if ds else 0))


_APPLIED = "_vislab_session_plan"  # on the session's model: the plan last applied to it by working()


def working():
    """(model, info): this session's copy of the pretrained model, with a head for its dataset's classes."""
    ss = st.session_state
    key = (ss[MODEL], ss[HEAD], num_classes(), _weights_key(ss[MODEL]), ss[STRATEGY] == "scratch")
    cached = ss.get(WORKING)
    if cached is None or cached[0] != key:
        spec = working_spec("scratch" if ss[STRATEGY] == "scratch" else "head")
        base, base_info = pretrained() if spec.strategy != "scratch" else (None, None)
        try:
            model, info, _ = experiment.prepare(spec, num_classes(), base, base_info)  # the one job builder
        except heads.AttentionHeadError as exc:  # e.g. a ViT picked while the head was "attention"
            ss[HEAD] = "linear"
            st.toast(f"{exc} The head is back to linear.", icon=":material/info:")
            return working()
        ss[WORKING] = (key, model, info)
    _, model, info = ss[WORKING]
    plan = ss.get(PLAN)
    if isinstance(plan, dict):  # saved in the lab: rebuild it for this model
        try:
            plan = FreezePlan.from_dict(plan)
        except (KeyError, TypeError, ValueError):
            plan = None
        ss[PLAN] = plan
    if plan is not None and getattr(model, _APPLIED, None) == _plan_key(plan):
        return model, info  # this plan is on the model already: walking the model again costs every rerun ~30 ms
    names = {s.name for s in stages.stages(model)}
    if plan is None or set(plan.trainable) != names:  # no plan yet, or one for another model
        strategy = ss[STRATEGY] if ss[STRATEGY] in freezing.STRATEGIES else "head"
        bn = None if strategy == "scratch" else ss[BN]
        ss[PLAN] = freezing.preset(model, strategy, max(1, min(ss[THAW_LAST], len(names) - 1)), bn)[-1]
    freezing.apply(model, ss[PLAN], strict=False)
    setattr(model, _APPLIED, _plan_key(ss[PLAN]))
    return model, info


def _plan_key(plan: FreezePlan) -> str:
    """The plan as text: the pages change plans in place (module overrides), so compare what they say. Only
    `freezing.apply` changes what trains, and the pages apply only the session's plan, so a model whose key
    matches the session's plan has it applied."""
    return json.dumps(plan.to_dict(), sort_keys=True)


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


def find_lr(ds: Dataset, img_size: int, batch: int):
    """The LR finder on a copy of the working model and this session's data (see vislab.training.lr_finder)."""
    from vislab.training import lr_finder

    model, info = working()
    train_items, val_items = ds.split()
    with st.spinner("Sweeping learning rates…"):
        return lr_finder.for_model(model, info, train_items, val_items, img_size, batch, seed=ds.seed)


if __name__ == "__main__":  # opened as a page of its own (Streamlit's old pages-folder mode)
    from pages import _route

    _route.through_app()
