"""The everyday path, walked: every control of every page, set to a few of its values, in each state a person
reaches (a fresh lab, a dataset chosen, after a run, with a run of another model), through app.py as the
server runs it (AppTest starts every run in Streamlit's old pages-folder mode, as a fresh server does, and the
page sends itself through app.py: see pages/_route.py). For each control it checks that nothing raised, that
the value just chosen is the value shown, and that every value is still set after a visit to another page.

A choice is sent the way the browser sends it: selectboxes, radios, multiselects and select-sliders send the
option's label as drawn (what a click on it sends), sliders and numbers their value. The controls are found
on the page, not listed here: a control added tomorrow is walked too.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.proto.WidgetStates_pb2 import WidgetState
from streamlit.testing.v1 import AppTest

from pages import _route
from tests.test_app import _zip_of

APP = Path(__file__).resolve().parents[1] / "app.py"
PAGES = [path for path, _, _ in _route.PAGES]
KINDS = ("selectbox", "radio", "multiselect", "select_slider", "slider", "number_input", "toggle", "checkbox",
         "text_input")
SLOW_CHOICES = {"ScoreCAM", "AblationCAM"}  # one forward pass per channel: correct, and minutes on 2 cores
TYPED = {"model_typed": ["test_efficientnet"], "layers_channels": ["1, 3"], "cls_name_0": ["boots"]}
SMALL_MODELS = ["mobilenet_v3_small", "tf_efficientnet_lite0"]  # the picker's walk: real catalog models, small


def _app() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=180).run()


def _send(w, ws: WidgetState) -> None:
    """Make the next run carry `ws` for this widget: what the browser sends when a person picks an option."""
    ws.id = w.id
    w.__class__ = type(f"Sent{type(w).__name__}", (type(w),), {"_widget_state": property(lambda self: ws)})


def _choose(w, value) -> None:
    ws = WidgetState()
    if w.type in ("selectbox", "radio"):
        ws.string_value = value
        _send(w, ws)
    elif w.type in ("multiselect", "select_slider"):
        ws.string_array_value.data[:] = value if w.type == "multiselect" else [value]
        _send(w, ws)
    else:
        w.set_value(value)


def _shown(w):
    """The value the page draws, as the person sees it (labels for option widgets)."""
    if w.type in ("selectbox", "radio"):
        return None if w.index is None else w.options[w.index]
    if w.type == "multiselect":
        return list(w.values)
    if w.type == "select_slider":
        return str(w.format_func(w.value))
    return w.value


def _candidates(w) -> list:
    """A few values of a control other than the one it shows (two at most: the walk must stay quick)."""
    now = _shown(w)
    if w.type in ("selectbox", "radio"):
        options = [o for o in w.options if o != now]
        if w.key == "model_pick":  # real catalog models, the small ones, then back to 'other' (the walk's model)
            options = [o for o in options if o.split("  ")[0] in SMALL_MODELS][:2]
            return options
        return options[:1] + options[-1:] if len(options) > 1 else options
    if w.type == "multiselect":
        options = [o for o in w.options if o.split(" ")[0] not in SLOW_CHOICES]
        picks = [o for o in options if o not in now]
        room = w.max_selections or len(options)
        out = [picks[:1]] if picks else []
        if len(picks) > 1 and room >= 2:
            out.append(picks[:2])
        return out
    if w.type == "select_slider":
        options = [o for o in w.options if o != now]
        return options[:1] + options[-1:] if len(options) > 1 else options
    if w.type == "slider":
        if isinstance(w.value, (list, tuple)):
            return []
        values = [w.min, w.max]
        return [v for v in dict.fromkeys(values) if v != now]
    if w.type == "number_input":
        step = w.step or 1
        low = w.min if w.min is not None else now - 10 * step
        high = w.max if w.max is not None else now + 10 * step
        values = [min(high, now + step) if now + step <= high else max(low, now - step), high]
        return [v for v in dict.fromkeys(values) if v != now]
    if w.type in ("toggle", "checkbox"):
        return [not now]
    return TYPED.get(w.key, [])


def _controls(at) -> dict:
    """The page's enabled controls, the sidebar's (your name, projector mode) included, by key, or by kind and
    label for a control without a key."""
    out = {}
    for kind in KINDS:
        for w in getattr(at, kind):
            if not w.disabled:
                out[w.key or f"{kind}:{w.label}"] = w
    return out


def _ok(at, where: str) -> None:
    assert not at.exception, f"{where}: {[e.value for e in at.exception]}"


def walk(at, state: str, pages=PAGES, log=None) -> dict:
    """Walk every control of every page; returns {page: number of values set}."""
    done = {}
    for page in pages:
        at.switch_page(page).run()
        _ok(at, f"{state} · {page} · opened")
        walked, n = set(), 0
        model = at.session_state["model_name"]
        while True:
            todo = [k for k in _controls(at) if k not in walked]
            if not todo:
                break
            key = todo[0]
            walked.add(key)
            drawn, original = set(_controls(at)), _shown(_controls(at)[key])
            for value in _candidates(_controls(at)[key]):
                w = _controls(at).get(key)
                if w is None or w.disabled:  # an earlier value of this control took it away: fine
                    break
                _choose(w, value)
                t = time.perf_counter()
                at.run()
                n += 1
                where = f"{state} · {page} · {key} = {value!r}"
                _ok(at, where)
                after = _controls(at).get(key)
                if after is not None:  # still drawn: it must show what was chosen
                    assert _shown(after) == value, f"{where}: shows {_shown(after)!r}"
                if log is not None:
                    log.append((where, time.perf_counter() - t))
            w = _controls(at).get(key)
            if w is not None and not drawn <= set(_controls(at)) and original not in ([], None):
                _choose(w, original)  # its last value hid other controls ('upload', no method): walk those too
                at.run()
                _ok(at, f"{state} · {page} · {key} back to {original!r}")
        if at.session_state["model_name"] != model:  # the Model page's walk changed it: back to the state's model
            _use_model(at, model)
            at.switch_page(page).run()
        before = {k: _shown(w) for k, w in _controls(at).items()}
        other = PAGES[0] if page != PAGES[0] else PAGES[1]
        at.switch_page(other).run()
        _ok(at, f"{state} · {other} after {page}")
        at.switch_page(page).run()
        _ok(at, f"{state} · back to {page}")
        after = {k: _shown(w) for k, w in _controls(at).items()}
        lost = {k: (v, after.get(k, "(gone)")) for k, v in before.items() if after.get(k, "(gone)") != v}
        assert not lost, f"{state} · {page}: settings lost after a visit to {other}: {lost}"
        done[page] = n
    return done


def _use_model(at, name: str) -> None:
    """Pick a model on the Model page: from the list when it is there, else typed under 'other'."""
    at.switch_page("pages/model.py").run()
    picker = at.selectbox(key="model_pick")
    label = next((o for o in picker.options if o.split("  ")[0] == name), None)
    _choose(picker, label or picker.options[-1])
    at.run()
    if label is None:
        at.text_input(key="model_typed").set_value(name).run()
    assert at.session_state["model_name"] == name


def _use_zip(at, blob: bytes) -> None:
    at.switch_page("pages/data.py").run()
    _choose(at.radio(key="data_source"), "A .zip of class folders")
    at.run()
    at.get("file_uploader")[0].set_value(("shapes.zip", blob, "application/zip")).run()
    assert at.session_state["dataset"] is not None


def _train(at) -> None:
    from vislab.serving import jobs, labs

    at.switch_page("pages/train.py").run()
    at.number_input(key="train_epochs").set_value(1).run()
    size = next(w for w in at.select_slider if w.key.startswith("train_size_"))
    _choose(size, "64")
    at.run()
    next(b for b in at.button if b.label == "Start training").click().run()
    job = jobs.Job(labs.Lab(at.session_state["lab_id"]).runs_dir / at.session_state["last_run"])
    deadline = time.time() + 180
    while job.active and time.time() < deadline:
        time.sleep(0.3)
    assert job.state == "done", job.status()
    at.run()


STATES = ["fresh lab", "dataset chosen", "after two runs", "a run of another model", "a ViT"]


@pytest.mark.slow
@pytest.mark.parametrize("state", STATES)
def test_every_control_of_every_page_keeps_what_was_chosen(state, synthetic):
    at = _app()
    _ok(at, "first run")
    if state != "fresh lab":
        _use_model(at, "test_resnet")
        _use_zip(at, _zip_of(synthetic))
    if state in ("after two runs", "a run of another model"):
        _train(at)
    if state == "after two runs":  # the look pages then offer a choice of runs
        _train(at)
    if state == "a run of another model":
        _use_model(at, "test_efficientnet")  # has SE blocks: the SE page's controls are walked too
    if state == "a ViT":
        _use_model(at, "test_vit")  # the Attention page's controls
    log = []
    done = walk(at, state, log=log)
    assert sum(done.values()) > 20, done  # the walk really set values
    slowest = sorted(log, key=lambda x: -x[1])[:3]
    print(f"{state}: {sum(done.values())} values set {done}; slowest: {slowest}")


def test_training_settings_survive_a_visit_a_reload_and_reach_the_job(synthetic):
    """Epochs 7 and the LR finder's rate on Train, a visit to Data, back: still 7 and that rate; a second
    session of the same lab link (a reload, a restart) shows them too; Start trains with them."""
    at = _app()
    _use_model(at, "test_resnet")
    _use_zip(at, _zip_of(synthetic))
    at.switch_page("pages/train.py").run()
    at.number_input(key="train_epochs").set_value(7).run()
    at.session_state["train_lr_next"] = 2.9e-4  # what the LR finder's "Use 2.9e-04" button puts there
    at.run()
    assert at.number_input(key="train_lr").value == pytest.approx(2.9e-4)
    at.switch_page("pages/data.py").run()
    at.switch_page("pages/train.py").run()
    assert at.number_input(key="train_epochs").value == 7
    assert at.number_input(key="train_lr").value == pytest.approx(2.9e-4)

    again = AppTest.from_file(str(APP), default_timeout=180)
    again.query_params["lab"] = at.session_state["lab_id"]
    again.run()
    again.switch_page("pages/train.py").run()
    _ok(again, "the lab opened again")
    assert again.number_input(key="train_epochs").value == 7
    assert again.number_input(key="train_lr").value == pytest.approx(2.9e-4)
    _choose(next(w for w in again.select_slider if w.key.startswith("train_size_")), "64")
    again.run()
    next(b for b in again.button if b.label == "Start training").click().run()
    from vislab.serving import jobs, labs

    job = jobs.Job(labs.Lab(again.session_state["lab_id"]).runs_dir / again.session_state["last_run"])
    train = job.experiment_spec()["train"]
    assert (train["epochs"], train["lr"]) == (7, pytest.approx(2.9e-4))
    next(b for b in again.button if b.label in ("Stop", "Cancel")).click().run()
