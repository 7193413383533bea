"""The Train page as a learner meets it (issue 22): what a starting job is doing, only the settings that apply,
the feature cache said plainly, a runs table with the head, percentages and one date format, and a warm
rerun that recomputes nothing of a finished run."""

from __future__ import annotations

import json
import re
import time

import pytest
from streamlit.testing.v1 import AppTest

from tests.test_app import _zip_of as _zip
from tests.test_walk import APP, _choose, _train, _use_model, _use_zip

DATE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d$")
PERCENT = re.compile(r"\d+\.\d%")


def _app() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=180).run()


def _lab(at):
    from vislab.serving import labs

    return labs.Lab(at.session_state["lab_id"])


def _captions(at, inside_expanders: bool | None = None) -> list[str]:
    """The main area's captions; only those inside expanders (True) or outside them (False)."""
    inner = {id(c.proto) for e in at.main.get("expander") for c in e.get("caption")} if inside_expanders \
        is not None else set()
    out = []
    for c in at.main.get("caption"):
        if inside_expanders is None or (id(c.proto) in inner) == inside_expanders:
            out.append(c.value)
    return out


def _preset(at, strategy: str) -> None:
    at.switch_page("pages/freeze.py").run()
    at.selectbox(key="preset_choice").set_value(strategy).run()
    next(b for b in at.button if b.label == "Apply preset").click().run()
    assert at.session_state["strategy"] == strategy


# ---- 1. a starting job says what it does, never "epoch 0/5 · batch 0/1 · loss 0.000" ---------------------
def test_a_starting_job_says_what_the_worker_is_doing(monkeypatch):
    from vislab.serving import events, jobs
    from vislab.training.loop import Event

    monkeypatch.setattr(events, "PROGRESS_EVERY_S", 0.0)  # every batch event is written (the worker throttles)
    at = _app()
    at.switch_page("pages/train.py").run()
    lab = _lab(at)
    job = jobs.create(lab.runs_dir / "20260101-000000_test_resnet_head", "train",
                      {"spec": {"model": "test_resnet", "train": {"epochs": 5}}, "report": None}, lab=lab.id)
    job.write_status(state="running", host="another-server", pid=1, started=time.time())  # alive: not ours to see
    writer = events.EventWriter(job)

    def line() -> str:
        at.run()
        assert not at.exception, at.exception
        bars = at.get("progress")
        assert bars, [e.type for e in at.main]
        return bars[0].proto.text

    try:
        assert line().startswith("starting the worker")  # running, no progress written yet
        writer.progress(force=True, stage="starting")
        assert line().startswith("starting the worker")
        writer.progress(force=True, stage="building", model="test_resnet", images=240)
        text = line()
        assert text.startswith("building the model `test_resnet`") and "loss" not in text
        assert any("building the model" in m.value for m in at.sidebar.get("markdown"))
        writer.event(Event("phase", 0, 5, phase="train", message="train: lr 0.001"))  # before the caching pass
        text = line()
        assert "epoch 1/5" in text and "frozen part" in text
        assert "epoch 0" not in text and "batch" not in text and "loss" not in text
        writer.event(Event("caching", 0, 5, phase="train", cached=120, to_cache=240))
        assert line().startswith("caching features: 120/240 images")
        writer.event(Event("cache", 0, 5, phase="train", message=(
            "features cached: prefix (6 modules up to 'layer3') run once by torch, 4.1 s (choosing the engine on "
            "the first batch cost 0.2 s; decoding 1.0 s in line, the prefix 2.9 s), 3 MiB in memory; training "
            "runs from 'layer4'")))
        text = line()
        assert text.startswith("epoch 1/5") and "first batch" in text and "loss" not in text
        assert any(c.startswith("The frozen part of the network (up to `layer3`) ran once over your 240 images "
                                "(4.1 s), and its outputs are reused every epoch") for c in _captions(at, False))
        writer.event(Event("batch", 1, 5, 1, 4, 0.5, phase="train"))
        assert line().startswith("epoch 1/5 (train) · batch 1/4 · loss 0.500")
        writer.event(Event("epoch", 1, 5, phase="train", metrics={
            "epoch": 1, "phase": "train", "lr": 1e-3, "train_loss": 0.5, "train_acc": 0.5, "val_loss": 0.4,
            "val_acc": 0.6, "seconds": 0.3, "partial": False}))
        writer.event(Event("phase", 1, 5, phase="fine-tune", message="fine-tune: lr 0.0001"))  # a second phase
        text = line()
        assert "epoch 2/5 (fine-tune)" in text and "batch" not in text and "loss" not in text
        writer.event(Event("end", 1, 5, message="stopped"))
        assert line().startswith("training ended")
    finally:
        writer.close()
        job.write_status(state="stopped", finished=time.time())


# ---- 2. the phase-2 factor and per-stage decay: offered (and sent) only where they apply -------------------
def test_lr_factor_and_stage_decay_are_offered_and_sent_only_where_they_apply(synthetic, monkeypatch):
    from pages import _jobs

    monkeypatch.setattr(_jobs.queue(), "submit", lambda job, device="cpu": job)  # stays queued: nothing trains
    at = _app()
    _use_model(at, "test_resnet")
    _use_zip(at, _zip(synthetic))

    def start() -> dict:
        at.switch_page("pages/train.py").run()
        next(b for b in at.button if b.label == "Start training").click().run()
        assert not at.exception, at.exception
        job = _jobs.jobs.Job(_lab(at).runs_dir / at.session_state["last_run"])
        train = job.experiment_spec()["train"]
        _jobs.stop(job)  # cancelled: the lab may start the next one
        at.run()
        return train

    def offered() -> set[str]:
        at.switch_page("pages/train.py").run()
        return {w.key for w in at.select_slider} & {"train_phase2_factor", "train_layer_decay"}

    # head only: one learning rate, no second phase; values kept from an earlier plan are not sent
    at.session_state["train_phase2_factor"] = 0.5
    at.session_state["train_layer_decay"] = 0.7
    assert offered() == set()
    assert any("Not used by strategy **head**" in c and "phase-2 LR factor" in c and "per-stage LR decay" in c
               for c in _captions(at))
    train = start()
    assert train["phase2_lr_factor"] == 0.1 and train["layer_decay"] is None

    _preset(at, "partial")  # the head and the last stage train: per-stage rates apply, a second phase does not
    assert offered() == {"train_layer_decay"}
    _choose(at.select_slider(key="train_layer_decay"), "0.7")
    at.run()
    train = start()
    assert train["phase2_lr_factor"] == 0.1 and train["layer_decay"] == 0.7

    _preset(at, "two-phase")  # both apply
    assert offered() == {"train_phase2_factor", "train_layer_decay"}
    _choose(at.select_slider(key="train_phase2_factor"), "0.5")
    at.run()
    assert not any("Not used by strategy" in c for c in _captions(at))
    train = start()
    assert train["phase2_lr_factor"] == 0.5 and train["layer_decay"] == 0.7


# ---- 3, 4, 5. after real runs: the cache said plainly, the runs table, a warm rerun that recomputes nothing --
@pytest.fixture
def two_runs(synthetic):
    """A lab with two finished runs of test_resnet, a linear head and an attention head; the page shows the
    latest and has the first reopened."""
    at = _app()
    _use_model(at, "test_resnet")
    _use_zip(at, _zip(synthetic))
    _train(at)
    first = at.session_state["last_run"]
    at.switch_page("pages/freeze.py").run()
    at.radio(key="head_choice").set_value("attention").run()
    assert at.session_state["head_kind"] == "attention"
    from pages import _jobs

    deadline = time.time() + 60  # the queue notices the first worker has ended (a Start before that is refused)
    while _jobs.queue().running_count() and time.time() < deadline:
        time.sleep(0.2)
    _train(at)
    assert at.session_state["last_run"] != first
    at.selectbox(key="reopen_pick").set_value(first).run()
    next(b for b in at.button if b.label == "Reopen").click().run()
    assert not at.exception, at.exception
    return at, first


def test_the_feature_cache_is_said_for_a_learner_with_the_detail_folded(two_runs):
    at, _ = two_runs
    stories = [c for c in _captions(at, False) if "network" in c]
    assert stories, _captions(at)
    assert all(re.search(r"(The frozen part of the network \(up to `[^`]+`\) ran once over your 24 images "
                         r"\(\d+\.\d s\), and its outputs were reused every epoch: an epoch took \d+(\.\d)? m?s "
                         r"instead of about \d+(\.\d)? m?s)|(Every epoch ran your 24 images through the whole network)",
                         c) for c in stories), stories
    outside = " ".join(_captions(at, False))
    assert "features cached: prefix" not in outside and "modules up to" not in outside and "MiB" not in outside
    assert any("features cached: prefix" in c or c.startswith("no feature cache") for c in _captions(at, True))


def test_the_runs_table_has_the_head_percentages_and_one_date_format(two_runs):
    at, first = two_runs
    frame = at.dataframe[-1].value
    assert list(frame.columns) == ["run", "date", "model", "head", "strategy", "epochs", "best val acc", "status"]
    assert sorted(frame["head"]) == ["attention", "linear"]
    assert frame.set_index("run").loc[first, "head"] == "linear"
    assert all(DATE.match(d) for d in frame["date"]), list(frame["date"])
    metrics = json.loads((_lab(at).runs_dir / first / "metrics.json").read_text())
    best = max(m["val_acc"] for m in metrics)
    assert frame.set_index("run").loc[first, "best val acc"] == pytest.approx(round(100 * best, 1))
    columns = json.loads(at.dataframe[-1].proto.columns)
    assert columns["best val acc"]["type_config"]["format"] == "%.1f%%"
    # the same percentage wherever the page says it, and the same date format
    assert PERCENT.search(next(s.value for s in at.success if "best val acc" in s.value))
    reopened = next(m.value for m in at.markdown if m.value.startswith(f"**{first}** —"))
    assert "linear head" in reopened and f"best val acc {best:.1%}" in reopened
    assert DATE.match(reopened.rsplit("saved ", 1)[1])
    picker = at.selectbox(key="reopen_pick")
    assert any("attention head" in o for o in picker.options) and any(f"{best:.1%}" in o for o in picker.options)
    assert all(DATE.match(o.split(" · ")[0]) for o in picker.options)
    for el in at.get("plotly_chart"):  # accuracy axes in percent
        layout = json.loads(el.proto.spec)["layout"]
        title = layout.get("title", {}).get("text", "")
        if title == "Training curves":
            assert layout["yaxis2"]["tickformat"] == ".0%"
        elif title.startswith("Accuracy per class"):
            assert layout["yaxis"]["tickformat"] == ".0%"


def test_a_warm_rerun_recomputes_nothing_of_a_finished_run(two_runs, monkeypatch):
    """Results of a finished run (weights, predictions, confusion matrix, figures, top-loss grid) are built once
    per run folder and version of its files; the runs table is read from the files only when they change."""
    import vislab.data.transforms
    from vislab.training import evaluation, runs
    from vislab.serving import jobs
    from vislab.figures import charts as plots, images as pictures

    at, first = two_runs
    calls: dict[str, int] = {}

    def counted(owner, name):
        real = getattr(owner, name)

        def wrapper(*a, **k):
            calls[name] = calls.get(name, 0) + 1
            return real(*a, **k)
        monkeypatch.setattr(owner, name, wrapper)

    for owner, name in ((runs, "load"), (runs, "load_predictions"), (runs, "read_config"), (runs, "read_metrics"),
                        (evaluation, "confusion"), (evaluation, "predict"), (plots, "curves"),
                        (plots, "confusion_matrix"), (plots, "per_class_accuracy"), (pictures, "image_grid"),
                        (vislab.data.transforms, "load_image"), (jobs.Job, "payload"), (jobs.Job, "events")):
        counted(owner, name)
    for _ in range(2):
        at.switch_page("pages/model.py").run()
        calls.clear()
        at.switch_page("pages/train.py").run()
        assert not at.exception, at.exception
        assert calls == {}, calls
    assert len(at.get("plotly_chart")) == 6  # both runs' curves, confusion matrices and per-class accuracy
    assert len(at.dataframe[-1].value) == 2
    # a changed run folder is read again: its results follow the files
    folder = _lab(at).runs_dir / first
    metrics = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps([{**m, "val_acc": 0.125} for m in metrics]))
    at.run()
    assert 12.5 in list(at.dataframe[-1].value["best val acc"]) and calls.get("read_metrics")
