"""Cached computations on models and the locks around them: a view's result is computed once per (view,
model, images, settings) and reused on every rerun (a slider move must not rerun the model); output shapes,
the execution order and one forward's time once per model. Views hook into the shared pretrained model,
so each runs under that model's lock: one session at a time per model."""

from __future__ import annotations

import threading

import streamlit as st

from pages._state import HEAD, MODEL


@st.cache_resource
def _locks() -> dict:
    return {}


def model_lock(model) -> threading.Lock:
    """Views hook into the shared pretrained model: one session at a time per model."""
    return _locks().setdefault(id(model), threading.Lock())


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
    from vislab.views import cam

    return cached_view("cam_layer", model, [], (name,), lambda: cam.default_layer(model, name))


@st.cache_data(show_spinner=False, max_entries=16)
def _forward_seconds(key: tuple, _model) -> float:
    from vislab.views import base as views

    with model_lock(_model):
        return views.forward_seconds(_model, key[-1])


def forward_seconds(model, input_size: tuple) -> float:
    """Seconds of one image's forward pass through `model` on this machine (measured once, cached)."""
    return _forward_seconds((id(model), input_size), model)


@st.cache_data(show_spinner="Tracing output shapes…", max_entries=16)
def output_shapes(key: tuple, _model) -> dict:
    """Output shape of every module, computed once per (model, head, classes, input size) key."""
    from vislab.views import architecture

    return architecture.output_shapes(_model, key[-1])


def shapes_for(model, info) -> dict:
    ss = st.session_state
    return output_shapes((ss[MODEL], ss[HEAD], info.num_classes, tuple(info.data_config.input_size)), model)


@st.cache_data(show_spinner="Tracing the execution order…", max_entries=8)
def layer_table(key: tuple, _model) -> list[dict]:
    """The layers of a model in execution order (vislab.views.layer_order), traced once per (model, input size) key."""
    from vislab.views import layer_order

    return layer_order.layer_table(_model, key[-1])


if __name__ == "__main__":  # opened as a page of its own (Streamlit's old pages-folder mode)
    from pages import _route

    _route.through_app()
