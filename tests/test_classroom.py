"""The Class page (issue 25, item 2): the instructor key (constant-time, rate-limited per client, never kept
or shown), the overview of every lab (names, datasets by content digest, models, job states, accuracies),
cheap to poll, leaderboards per dataset, a run opened read-only; and participants who never see another lab.

The labs are real: made with labs.create / write_state / write_dataset, their runs trained by the worker's own
`execute` into job folders written by jobs.create (test_resnet, 64 px, one epoch on a few synthetic images),
once per session and copied into each test's lab home."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from vislab.serving import classroom, instructor, jobs, labs

APP = Path(__file__).resolve().parents[1] / "app.py"
KEY = "correct horse battery staple 42"
NAMES = ("Ada <b>Lovelace</b>", "Grace **Hopper**")  # markup in names: shown as typed


def train_run(lab: labs.Lab, report, name: str, model: str = "test_resnet") -> jobs.Job:
    """A finished training run of `lab` on `report`, through the job folder and the worker's own runner."""
    import os

    from vislab.data import folders
    from vislab.serving.events import EventWriter
    from vislab.serving.worker import FileStop, execute
    from vislab.training.experiment import Spec
    from vislab.training.loop import TrainConfig
    from vislab.training.tasks import TrainTask

    spec = Spec(model=model, weights="random", img_size=64, train=TrainConfig(epochs=2, batch_size=8, device="cpu"))
    job = jobs.create(lab.runs_dir / name, "train", {**TrainTask(spec, report).to_payload(), "device": "cpu"},
                      lab=lab.id)
    job.write_status(state="running", pid=os.getpid(), started=time.time())
    writer = EventWriter(job)
    try:
        outcome = execute(job, writer, FileStop(job))
    finally:
        writer.close()
    job.write_status(finished=time.time(), **outcome)
    assert outcome["state"] == "done", outcome
    assert folders  # the report came from folders.load_dataset
    return job


def make_lab(name: str, root: Path, label: str) -> labs.Lab:
    """A named lab whose dataset is the image folder `root`, as the Data page keeps one."""
    from vislab.data import folders

    report = folders.load_dataset(root)
    lab = labs.create()
    lab.write_dataset(folders.report_to_dict(report))
    lab.write_state({"lab_name": name, "model_name": "test_resnet", "strategy": "head",
                     "dataset": {"label": label, "per_class": None, "val_frac": 0.2, "seed": 0, "root": report.root,
                                 "images": len(report.items)}})
    return lab


@pytest.fixture(scope="session")
def class_of_two(tmp_path_factory, synthetic):
    """Two named labs, each with a finished run: one on the 3-class synthetic set, one on a 2-class set.
    Built once in a lab home of their own; each test copies them into its own."""
    import os

    from vislab.data import folders
    from vislab.data.synthetic import make_synthetic

    home = tmp_path_factory.mktemp("class_home")
    other = make_synthetic(tmp_path_factory.mktemp("two_class"), classes=2, per_class=6, size=64, seed=3)
    old = os.environ.get("VISLAB_HOME")
    os.environ["VISLAB_HOME"] = str(home)
    try:
        a = make_lab(NAMES[0], synthetic, "stripes (zip)")
        b = make_lab(NAMES[1], other, "two stripes (zip)")
        train_run(a, folders.load_dataset(synthetic), "20260101-100000_test_resnet_head")
        train_run(b, folders.load_dataset(other), "20260101-110000_test_resnet_head")
    finally:
        if old is None:
            os.environ.pop("VISLAB_HOME", None)
        else:
            os.environ["VISLAB_HOME"] = old
    return home / "labs", (a.id, b.id), other


@pytest.fixture
def two_labs(class_of_two):
    root, ids, other = class_of_two
    for lab_id in ids:
        shutil.copytree(root / lab_id, labs.labs_dir() / lab_id)
    return ids, other


def _best(lab_id: str) -> float:
    from vislab.training import runs

    [job] = [j for j in jobs.list_jobs(labs.Lab(lab_id).runs_dir) if j.id.endswith("_test_resnet_head")]
    return max(m["val_acc"] for m in runs.read_metrics(job.folder))


# ---- the library: overview, digests, leaderboards, polling --------------------------------------------------
def test_the_overview_lists_every_lab_with_its_dataset_model_job_and_best(two_labs, synthetic):
    (a, b), other = two_labs
    rows = {r.id: r for r in classroom.overview()}
    assert set(rows) == {a, b}
    assert [rows[a].name, rows[b].name] == list(NAMES)
    assert rows[a].dataset.classes == ("class_0", "class_1", "class_2") and rows[a].dataset.images == 24
    assert rows[b].dataset.classes == ("class_0", "class_1") and rows[b].dataset.images == 12
    assert rows[a].dataset.digest != rows[b].dataset.digest
    for lab_id in (a, b):
        row = rows[lab_id]
        assert row.status == "done" and row.latest.model == "test_resnet" and row.latest.strategy == "head"
        assert row.best.best == pytest.approx(_best(lab_id)) and row.latest.openable
        assert row.activity > 0
    # a queued job, a running one with its progress, a failed one with its message: the latest job is said
    lab = labs.Lab(a)
    queued = jobs.create(lab.runs_dir / "20260101-120000_q", "train", {"spec": {"model": "test_resnet"}}, lab=a)
    assert classroom.lab_row(lab.folder).status == "queued"
    queued.write_status(state="running", host="another-server", pid=1, started=time.time())
    jobs.JobWriter(queued).write_progress({"stage": "training", "epoch": 2, "epochs": 4, "batch": 1, "batches": 2})
    assert classroom.lab_row(lab.folder).status == "running · epoch 2/4 · 38%"  # (1 + 1/2) / 4
    queued.write_status(state="error", message="out of memory: use a smaller batch size or image size")
    assert classroom.lab_row(lab.folder).status == \
        "failed: out of memory: use a smaller batch size or image size"
    assert classroom.lab_row(lab.folder).best.best == pytest.approx(_best(a))  # the failed job scores nothing


def test_the_same_images_uploaded_twice_are_one_dataset_and_one_leaderboard(two_labs, synthetic, tmp_path):
    (a, b), other = two_labs
    copy = shutil.copytree(synthetic, tmp_path / "someone_elses_upload")  # same bytes, another folder
    c = make_lab("Alan", copy, "my stripes").id
    from vislab.data import folders

    train_run(labs.Lab(c), folders.load_dataset(copy), "20260101-130000_test_efficientnet_head",
              model="test_efficientnet")
    rows = {r.id: r for r in classroom.overview()}
    assert rows[c].dataset.digest == rows[a].dataset.digest != rows[b].dataset.digest
    boards = classroom.leaderboards(list(rows.values()))
    assert len(boards) == 2
    shared = next(bd for bd in boards if bd.dataset.digest == rows[a].dataset.digest)
    assert {lab.id for lab, _ in shared.entries} == {a, c}
    accs = [run.best for _, run in shared.entries]
    assert accs == sorted(accs, reverse=True)
    assert {run.model for _, run in shared.entries} == {"test_resnet", "test_efficientnet"}
    alone = next(bd for bd in boards if bd is not shared)
    assert [lab.id for lab, _ in alone.entries] == [b] and alone.label == "two stripes (zip)"
    # one image changed (another size): another dataset
    victim = sorted((copy / "class_1").iterdir())[0]
    victim.write_bytes(victim.read_bytes() + b"\0" * 10)
    assert classroom.dataset_info(folders.report_to_dict(folders.load_dataset(copy))).digest != rows[a].dataset.digest


def test_a_poll_reads_only_the_files_that_changed(two_labs):
    (a, b), _ = two_labs
    classroom.overview()
    before = classroom.READS["count"]
    rows = classroom.overview()
    assert classroom.READS["count"] == before  # nothing changed: stats only
    lab = labs.Lab(a)
    job = jobs.create(lab.runs_dir / "20260101-120000_live", "train", {"spec": {"model": "test_resnet"}}, lab=a)
    job.write_status(state="running", host="another-server", pid=1, started=time.time())
    writer = jobs.JobWriter(job)
    writer.write_progress({"stage": "training", "epoch": 1, "epochs": 2, "batch": 1, "batches": 4})
    classroom.overview()
    before = classroom.READS["count"]
    writer.write_progress({"stage": "training", "epoch": 1, "epochs": 2, "batch": 3, "batches": 4})
    rows = {r.id: r for r in classroom.overview()}
    assert classroom.READS["count"] == before + 1  # progress.json, and nothing else
    assert rows[a].status == "running · epoch 1/2 · 38%"
    assert "torch" not in classroom.__dict__ and "vislab.training" not in " ".join(
        getattr(v, "__name__", "") for v in vars(classroom).values())


# ---- the key ----------------------------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_key_is_checked_and_too_many_failures_lock_a_client_out(monkeypatch):
    monkeypatch.delenv(instructor.ENV, raising=False)
    clock = Clock()
    limiter = instructor.Limiter(clock=clock)
    assert not instructor.configured() and not instructor.check("", "x", limiter)
    monkeypatch.setenv(instructor.ENV, "")
    assert not instructor.configured() and not instructor.check("", "x", limiter)  # empty: not configured
    monkeypatch.setenv(instructor.ENV, KEY)
    assert instructor.check(KEY, "a", limiter)
    for wrong in ("", "x", KEY[:-1], KEY + " ", KEY.upper()):  # a wrong length too
        verdict = instructor.check(wrong, "a", limiter)
        assert not verdict and verdict.message.startswith("Wrong key")
    assert "try again in 60 seconds" in verdict.message  # the fifth failure locks
    refused = instructor.check(KEY, "a", limiter)
    assert not refused and refused.locked_s == 60 and "try again in 60 seconds" in refused.message
    assert instructor.check(KEY, "b", limiter)  # per client: another address is not locked out
    clock.now += 30
    assert "try again in 30 seconds" in instructor.check(KEY, "a", limiter).message
    clock.now += 30
    assert instructor.check(KEY, "a", limiter)  # the lock expired
    # failures spread out beyond the window never lock
    for _ in range(10):
        assert instructor.check("nope", "c", limiter).locked_s == 0
        clock.now += 15
    assert KEY not in repr(limiter) and KEY not in repr(instructor.check(KEY, "c", limiter))


# ---- the page, through app.py -------------------------------------------------------------------------------
def _app(lab_id: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=180)
    if lab_id:
        at.query_params["lab"] = lab_id
    return at.run()


def _sent(at) -> str:
    """Everything the page sent to the browser: each element's message, and the dataframes' cells."""
    parts = [str(getattr(node, "proto", "")) for node in at._tree]
    parts += [df.value.to_string() for df in at.dataframe]
    return "\n".join(parts)


def _class_page(at) -> AppTest:
    return at.switch_page("pages/class.py").run()


def _give(at, key: str) -> AppTest:
    at.text_input(key="class_key_input").input(key)
    return at.button[0].click().run() if not at.get("form") else \
        next(b for b in at.get("form_submit_button")).click().run()


@pytest.fixture
def clock(monkeypatch):
    """The server's limiter with a clock the test moves (no sleeps)."""
    c = Clock()
    monkeypatch.setattr(instructor, "LIMITER", instructor.Limiter(clock=c))
    return c


def test_without_a_key_configured_the_page_says_how_and_lists_nothing(two_labs, monkeypatch):
    monkeypatch.delenv(instructor.ENV, raising=False)
    at = _class_page(_app())
    assert not at.exception, at.exception
    text = _sent(at)
    assert "VISLAB_INSTRUCTOR_KEY=" in text and "scripts/start.sh" in text
    assert not at.main.text_input and not at.dataframe
    for lab_id, name in zip(two_labs[0], NAMES):
        assert lab_id not in text and "Lovelace" not in text and "Hopper" not in text


def test_a_wrong_key_lists_nothing_and_too_many_refuse_even_the_right_key(two_labs, monkeypatch, clock):
    monkeypatch.setenv(instructor.ENV, KEY)
    at = _class_page(_app())
    assert at.text_input(key="class_key_input").proto.type == at.text_input(key="class_key_input").proto.PASSWORD
    for n in range(instructor.MAX_FAILURES):
        _give(at, f"guess {n}")
        assert not at.exception, at.exception
        assert at.error and at.error[0].value.startswith("Wrong key")
        assert not at.dataframe and "Lovelace" not in _sent(at)
    assert "try again in 60 seconds" in at.error[0].value
    _give(at, KEY)
    assert "try again in 60 seconds" in at.error[0].value and not at.dataframe
    clock.now += 61
    _give(at, KEY)
    assert not at.error and at.dataframe


def test_the_right_key_lists_both_labs_and_opens_a_run_read_only(two_labs, monkeypatch, clock):
    (a, b), _ = two_labs
    monkeypatch.setenv(instructor.ENV, KEY)
    at = _give(_class_page(_app()), KEY)
    assert not at.exception, at.exception
    table = at.dataframe[0].value.set_index("name")
    assert set(NAMES) <= set(table.index)
    for lab_id, name, classes, images in ((a, NAMES[0], 3, 24), (b, NAMES[1], 2, 12)):
        row = table.loc[name]
        assert row["classes"] == classes and row["images"] == images and row["job"] == "done"
        assert row["best val acc"] == pytest.approx(round(100 * _best(lab_id), 1))
        assert row["model"] == "test_resnet" and row["strategy"] == "head"
    assert "stripes (zip)" in table.loc[NAMES[0], "dataset"]
    boards = at.dataframe[1:]
    assert len(boards) == 2 and {tuple(bd.value["name"]) for bd in boards} == {(NAMES[0],), (NAMES[1],)}
    text = _sent(at)
    assert a not in text and b not in text  # the labs' private links are never on the (projected) page
    picker = at.selectbox(key="class_open_run")
    pick = next(o for o in picker.options if o.startswith(NAMES[1]))
    at = picker.select(f"{b}/20260101-110000_test_resnet_head").run()
    assert not at.exception, at.exception
    assert pick and f"{NAMES[1]} · test_resnet · head · {_best(b):.1%}" in pick
    titles = [json.loads(c.proto.spec)["layout"].get("title", {}).get("text", "") for c in at.get("plotly_chart")]
    assert "Training curves" in titles and any(t.startswith("Accuracy per class") for t in titles)
    assert sum(1 for c in at.get("plotly_chart") if '"type":"heatmap"' in c.proto.spec.replace(" ", "")) >= 2
    assert any("Top losses" in s.value for s in at.subheader) and at.get("image")  # the top-loss grid
    assert any("Grad-CAM" in s.value for s in at.subheader)
    cams = [c for c in at.get("plotly_chart") if '"type":"image"' in c.proto.spec.replace(" ", "")]
    assert len(cams) == 1 and json.loads(cams[0].proto.spec)["data"][0]["type"] == "image"
    from vislab.training import runs

    val = runs.load_predictions(labs.Lab(b).runs_dir / "20260101-110000_test_resnet_head")
    shown = sum(t["type"] == "image" for t in json.loads(cams[0].proto.spec)["data"])
    assert shown == min(6, len(val.labels)) and shown >= 2  # its validation images, every class
    text = _sent(at)
    assert b not in text and a not in text and "Run folder" not in text and str(labs.labs_dir()) not in text
    assert not at.get("file_uploader")  # no classify-a-new-image
    assert {bt.label for bt in at.main.button} == {"Lock"}  # nothing that starts, stops or changes a job
    next(bt for bt in at.button if bt.label == "Lock").click().run()
    assert not at.dataframe and at.text_input(key="class_key_input")


def test_the_key_and_the_flag_never_reach_the_lab_the_url_or_the_page(two_labs, monkeypatch, clock):
    monkeypatch.setenv(instructor.ENV, KEY)
    at = _give(_class_page(_app()), KEY)
    assert at.dataframe
    mine = labs.Lab(at.session_state["lab_id"])
    at.switch_page("pages/home.py").run()
    at = _class_page(at)
    assert at.dataframe  # the flag lasts for the session ...
    saved = (mine.folder / "state.json").read_text()
    assert KEY not in saved and "class_instructor" not in saved and "class_key" not in saved  # ... never in the lab
    assert dict(at.query_params) == {"lab": [mine.id]} or dict(at.query_params) == {"lab": mine.id}
    assert KEY not in _sent(at)
    fresh = _class_page(_app(mine.id))  # the same lab in another browser: asks for the key again
    assert not fresh.dataframe and fresh.text_input(key="class_key_input")


def test_a_participant_sees_no_other_lab_on_any_page(two_labs, monkeypatch):
    from pages import _route

    (a, b), _ = two_labs
    monkeypatch.setenv(instructor.ENV, KEY)
    at = _app(a)
    seen = []
    for path, _, _ in _route.PAGES:
        at.switch_page(path).run()
        assert not at.exception, (path, at.exception)
        seen.append(_sent(at))
    text = "\n".join(seen)
    assert "Lovelace" in text  # its own name, in the sidebar
    assert b not in text and "Hopper" not in text and "two stripes" not in text
    assert KEY not in text
