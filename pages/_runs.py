"""The models the look pages show: the pretrained one, the lab's fine-tuned run in view (a reopened run,
else its latest finished one), or both side by side; a run's validation predictions when it was saved
without them."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from pages import _state
from pages._cached import model_lock
from pages._dataset import runs_folder
from pages._state import LAST_RUN, LOOK_RUN, MODEL, REOPENED, VIEW_CHOICE
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
    run: str = ""  # the lab's run folder it was loaded from ("" for the pretrained model)


def class_names(name: str, num: int) -> list[str]:
    from vislab.training.evaluation import class_names as names

    return names(name, num)


@dataclass
class RunInfo:
    """A finished (or stopped, or interrupted) training run of the lab, as the look pages list it."""

    name: str  # its folder under the lab's runs/
    model: str
    strategy: str
    head: str
    best: float | None
    saved: str

    @property
    def label(self) -> str:
        acc = "—" if self.best is None else f"{self.best:.1%}"
        return f"{self.saved} · {self.strategy} · {self.head} head · best val acc {acc}"


def lab_runs(model: str | None = None) -> list[RunInfo]:
    """The lab's openable training runs, newest first; only those of `model` when given."""
    from vislab.training import runs
    from pages import _jobs

    out = []
    for job in _jobs.lab_jobs("train"):
        if job.state not in ("done", "stopped", "interrupted"):
            continue
        cfg = runs.read_config(job.folder)
        if not cfg or (model is not None and cfg.get("model") != model):
            continue
        accs = [m["val_acc"] for m in runs.read_metrics(job.folder)]
        out.append(RunInfo(job.id, cfg.get("model", "?"), cfg.get("strategy", "?"), cfg.get("head_kind", "linear"),
                           max(accs) if accs else None, (cfg.get("saved") or job.id[:15].replace("_", " "))[:16]))
    return out


def current_run():
    """(model, Run, Predictions or None) of the run the look pages show: one of the lab's runs *of the model in
    use* (the one picked on a look page, else a reopened one, else the lab's latest run, else its newest run
    of this model; also from before a reload or a restart); None when the lab has no run of this model."""
    from vislab.training import runs
    from pages import _jobs

    ss = st.session_state
    mine = [r.name for r in lab_runs(ss[MODEL])]
    for name in [ss.get(LOOK_RUN), ss.get(REOPENED), ss.get(LAST_RUN), *mine]:
        if not name or name not in mine:
            continue
        folder = runs_folder() / name
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

    from vislab.training import evaluation, runs

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
    """The fine-tuned model the look pages show (see current_run), or None."""
    current = current_run()
    if current is None:
        return None
    model, run, _ = current
    name = run_folder_name(run)
    return ViewModel(f"fine-tuned ({name})", model, run.data_config, run.classes, True, run.config.get("model", ""),
                     name)


def run_folder_name(run) -> str:
    """The lab's run folder of a loaded run (an interrupted run loads from its checkpoint/ inside it)."""
    return run.path.parent.name if run.path.name == "checkpoint" else run.name


def view_models(key: str, allow_both: bool = True) -> list[ViewModel]:
    """The pretrained model (its original head), the fine-tuned one, or both side by side. The fine-tuned one
    is a run of the model in use, named with its strategy, head, accuracy and date, picked among the lab's runs
    of this model (the pick is shared by the look pages)."""
    ss = st.session_state
    base, info = pretrained()
    pre = ViewModel(f"pretrained {info.name}", base, info.data_config,
                    class_names(info.name, info.num_classes), info.pretrained)
    mine = lab_runs(ss[MODEL])
    if len(mine) > 1:
        names = [r.name for r in mine]
        if ss.get(LOOK_RUN) not in names:  # none picked yet, or one of another model: the run in view
            current = current_run()
            ss[_state.kept(LOOK_RUN)] = run_folder_name(current[1]) if current else names[0]
    tuned = trained_view()
    options = ["pretrained"] + (["fine-tuned"] + (["side by side"] if allow_both else []) if tuned else [])
    # a run of the model in use: the fine-tuned model first (also when the radio was drawn before the run
    # existed, with nothing else to pick); a person's own pick stays until the choice offered changes
    _state.follow(f"{key}{VIEW_CHOICE}", options[1 if tuned else 0])
    c1, c2 = st.columns([2, 3])
    choice = c1.radio("Model", options, horizontal=True, key=f"{key}{VIEW_CHOICE}",
                      help="Train a model on the Train page (or reopen a run) to compare it with the pretrained one. "
                           "Once a run of the current model exists, the fine-tuned model is shown first.")
    by_name = {r.name: r for r in mine}
    if len(mine) > 1 and choice != "pretrained":
        c2.selectbox(f"Run of `{ss[MODEL]}`", list(by_name), key=_state.kept(LOOK_RUN),
                     format_func=lambda n: by_name[n].label,
                     help="The lab's runs of the model in use, newest first (the same run on every look page)")
    if tuned is not None and choice != "pretrained":
        r = by_name.get(tuned.run)
        if r is not None:
            st.caption(f"Fine-tuned: `{r.model}` · strategy **{r.strategy}** · {r.head} head · best val acc "
                       f"{'—' if r.best is None else f'{r.best:.1%}'} · saved {r.saved} · run `{r.name}`")
    elif tuned is None:
        others = sorted({r.model for r in lab_runs()} - {ss[MODEL]})
        if others:
            st.caption(f"No run of `{ss[MODEL]}` in this lab yet; its runs are of {', '.join(f'`{m}`' for m in others)}"
                       " (pick that model on the Model page to look inside them).")
    chosen = {"pretrained": [pre], "fine-tuned": [tuned], "side by side": [pre, tuned]}[choice]
    for vm in chosen:
        if not vm.real_weights:
            st.warning(f"`{vm.label}` has random weights (none on this machine): what it 'looks at' means little. "
                       "Pick a model with real weights on the Model page.")
    return chosen

if __name__ == "__main__":  # opened as a page of its own (Streamlit's old pages-folder mode)
    from pages import _route

    _route.through_app()
