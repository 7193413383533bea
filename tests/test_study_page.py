"""The Study page (issue 24): it opens in every state, Start trains a study through the lab's real queue and
draws its figures and table, a row opens as its run, Stop keeps the finished rows and Resume trains only the
missing ones."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.test_app import _zip_of
from tests.test_walk import APP, _use_model, _use_zip


def _app() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=180).run()


def _lab(at):
    from vislab.serving import labs

    return labs.Lab(at.session_state["lab_id"])


def _titles(at) -> list[str]:
    return [json.loads(el.proto.spec).get("layout", {}).get("title", {}).get("text", "")
            for el in at.get("plotly_chart")]


def _studies(at):
    from pages import _jobs

    return [j for j in _jobs.jobs.list_jobs(_lab(at).runs_dir) if j.payload().get("kind") == "study"]


def _wait_until(cond, timeout: float = 180, every: float = 0.05) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "timed out"
        time.sleep(every)


def _settle(at) -> None:
    """The queue notices the worker has ended (a Start before that is refused), then the page once more."""
    from pages import _jobs

    _wait_until(lambda: not _jobs.queue().running_count(), 60, 0.2)
    at.run()


def _set_study(at, depths: list[int], seeds: int = 1, epochs: int = 1) -> None:
    """A tiny grid: test_resnet at 64 px, batch 8, 100 % of the images, no scratch reference."""
    at.switch_page("pages/study.py").run()
    at.multiselect(key="study_depths_5").set_value(depths).run()
    at.multiselect(key="study_fractions").set_value([1.0]).run()
    at.number_input(key="study_seeds").set_value(seeds).run()
    at.checkbox(key="study_scratch").uncheck().run()
    at.number_input(key="study_epochs").set_value(epochs).run()
    at.select_slider(key="study_size").set_value(64).run()
    at.select_slider(key="study_batch").set_value(8).run()
    assert not at.exception, at.exception


def _start(at):
    next(b for b in at.button if b.label == "Start the study").click().run()
    assert not at.exception and not at.warning, (at.exception, [w.value for w in at.warning])
    return _studies(at)[0]


@pytest.fixture
def lab(synthetic):
    at = _app()
    _use_model(at, "test_resnet")
    _use_zip(at, _zip_of(synthetic))
    return at


def test_a_fresh_lab_is_told_to_choose_a_dataset_first():
    at = _app()
    at.switch_page("pages/study.py").run()
    assert not at.exception and not at.error
    assert any("Choose a dataset" in i.value for i in at.info)
    assert not [b for b in at.button if b.label == "Start the study"]


def test_with_a_dataset_the_grid_is_offered_and_counted(lab):
    at = lab
    at.switch_page("pages/study.py").run()
    assert not at.exception and not at.error
    depths = at.multiselect(key="study_depths_5")
    assert depths.options == ["0 (head only)", "1", "2", "3", "4", "5 (all)"]
    assert depths.value == [0, 1, 2, 5]  # default_depths(5): spread over the network
    assert at.multiselect(key="study_fractions").values == ["25%", "100%"]
    assert at.number_input(key="study_seeds").value == 2
    # 2 seeds x 2 fractions x (4 depths + scratch)
    assert any("**20 runs**" in c.value for c in at.caption), [c.value for c in at.caption]
    at.checkbox(key="study_lpft").check().run()
    assert any("**24 runs**" in c.value for c in at.caption)
    at.multiselect(key="study_bn").set_value(["eval", "train"]).run()  # a BatchNorm axis: finetune and lp-ft twice
    assert any("**44 runs**" in c.value for c in at.caption)
    at.checkbox(key="study_surgical").check().run()  # one row per depth above 0: stages 1, 2 and 5 alone
    assert any("**68 runs**" in c.value for c in at.caption), [c.value for c in at.caption]
    at.multiselect(key="study_fractions").set_value([]).run()
    assert any("at least one" in w.value for w in at.warning)
    assert next(b for b in at.button if b.label == "Start the study").disabled


def test_start_trains_a_study_and_draws_its_answer(lab, synthetic):
    at = lab
    _set_study(at, [0, 1])
    assert any("**2 runs**" in c.value for c in at.caption)
    job = _start(at)
    assert job.payload()["data_label"] == job.payload()["report"]["root"]  # the commands' --data: its folder
    _wait_until(lambda: not job.active)
    assert job.state == "done", (job.status(), (job.folder / "worker.log").read_text()[-2000:])
    _settle(at)
    assert not at.exception and not at.error
    assert any(s.value.startswith("Done: 2 rows") for s in at.success)
    titles = _titles(at)
    assert any(t.startswith("test_resnet: what to thaw") for t in titles), titles
    assert any(t.startswith("Mean best validation accuracy") for t in titles), titles
    table = at.dataframe[0].value
    assert sorted(table["name"]) == ["finetune_d0_f100_s0", "finetune_d1_f100_s0"]
    assert list(table.columns) == ["name", "strategy", "depth", "fraction", "seed", "bn", "best val acc",
                                   "final val loss", "train s", "trainable params", "command"]
    assert all(c.startswith("vislab train --data ") for c in table["command"])
    params = table.set_index("depth")["trainable params"]
    assert params[0] < params[1]  # depth 1 thaws a stage
    assert any("of the training images: thawing" in m.value for m in at.markdown)
    progress = json.loads((job.folder / "progress.json").read_text())
    assert (progress["runs_done"], progress["runs"]) == (2, 2)

    at.selectbox(key="study_row").set_value("finetune_d1_f100_s0").run()  # a row, opened as its run
    assert not at.exception and not at.error
    assert "Training curves" in _titles(at)
    assert any("--thaw-last 1" in c.value or "--strategy partial" in c.value for c in at.code)

    again = AppTest.from_file(str(APP), default_timeout=180)  # a reload of the lab's link: the last study shows
    again.query_params["lab"] = _lab(at).id
    again.run()
    again.switch_page("pages/study.py").run()
    assert not again.exception and again.dataframe[0].value.shape[0] == 2


def test_stop_keeps_the_finished_rows_and_resume_trains_only_the_missing(lab):
    from vislab.training import study

    at = lab
    _set_study(at, [0, 5], seeds=3, epochs=2)  # 6 rows; a full fine-tune row is the slow one to stop in
    job = _start(at)
    _wait_until(lambda: (s := study.load(job.folder)) is not None and len(s.rows) >= 1)
    at.run()  # running: the page follows it, row by row
    assert not at.exception
    bars = [el.proto.text for el in at.get("progress")]
    assert any(re.match(r"row \d of 6: ", t) for t in bars), bars
    at.button(key="study_stop").click().run()
    _wait_until(lambda: not job.active)
    assert job.state == "stopped", job.status()
    kept = study.load(job.folder)
    assert 1 <= len(kept.rows) < 6
    _settle(at)
    assert any(f"Stopped with {len(kept.rows)} of 6 rows" in w.value for w in at.warning)
    assert at.dataframe[0].value.shape[0] == len(kept.rows)  # the finished rows are drawn
    first = {r.point.name: Path(r.run_dir, "model.safetensors").stat().st_mtime_ns for r in kept.rows}

    resume = at.button(key="study_resume")
    assert resume.label == f"Resume: train the missing rows ({6 - len(kept.rows)})"
    resume.click().run()
    assert not at.exception and not at.warning
    again = _studies(at)[0]
    assert again.folder != job.folder and again.payload()["folder"] == str(job.folder)
    _wait_until(lambda: not again.active)
    assert again.state == "done", (again.status(), (again.folder / "worker.log").read_text()[-2000:])
    done = study.load(job.folder)
    assert len(done.rows) == 6 and not done.missing()
    for r in done.rows:  # the rows kept were not trained again
        if r.point.name in first:
            assert Path(r.run_dir, "model.safetensors").stat().st_mtime_ns == first[r.point.name]
    trained = {e["run"] for e in again.events() if e.get("run")}
    assert trained == {p.name for p in kept.missing()}
    _settle(at)
    assert any(s.value.startswith("Done: 6 rows") for s in at.success)
    assert at.dataframe[0].value.shape[0] == 6
    # the heading names the study whose rows are shown, and the Resume job that finished it
    assert f"The last study: `{job.folder.name}` (resumed by `{again.id}`)" in [h.value for h in at.subheader]
