"""The models the look pages show: the pretrained one, the lab's fine-tuned run in view (a reopened run,
else its latest finished one), or both side by side; a run's validation predictions when it was saved
without them."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from pages._cached import model_lock
from pages._dataset import session_runs
from pages._state import LAST_RUN, MODEL, REOPENED, VIEW_CHOICE
from pages._working import pretrained


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
