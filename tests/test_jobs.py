"""Background jobs: worker processes, the file protocol, the queue, stop, crash and restart."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vislab.data import folders as data
from vislab.training import compare, experiment, runs, study, tasks
from vislab.training.tasks import CompareTask, StudyTask, TrainTask
from vislab.serving import claims, jobs, labs
from vislab.serving.jobqueue import BaseQueue
from vislab.serving.localqueue import LocalQueue
from vislab.training.loop import TrainConfig


def _spec(epochs=2, batch=8, **kw) -> experiment.Spec:
    # torch runs the frozen prefix: "auto" keeps whichever engine timed faster in that process, so two
    # processes could train on features from different engines (equal within tolerance, not bit for bit)
    kw.setdefault("engine", "torch")
    return experiment.Spec(model="test_resnet", strategy="head", weights="auto", img_size=64,
                           train=TrainConfig(epochs=epochs, batch_size=batch, seed=3), **kw)


def _job(synthetic, lab=None, spec=None, name="run", **payload) -> jobs.Job:
    lab = lab or labs.create()
    task = TrainTask(spec or _spec(), data.scan_folder(synthetic))
    return jobs.create(lab.runs_dir / name, task.kind, {**task.to_payload(), **payload}, lab=lab.id)


def test_a_task_is_what_its_job_json_says(synthetic, tmp_path):
    """A job is described once: the task the pages or the CLI built is the task the worker reads back."""
    report = data.scan_folder(synthetic)
    train = TrainTask(_spec(epochs=4), report, plan={"layer4": "trainable"}, resume=str(tmp_path / "old"))
    comp = CompareTask("test_resnet", report, [compare.Config.preset("head"), compare.Config.preset("full")], 2,
                       img_size=64, batch_size=8, seed=5, per_class=3, engine="torch")
    plan = study.Plan(model="test_resnet", depths=[0, 2], fractions=[0.25, 1.0], seeds=[0, 1],
                      bn=[None, "train"], strategies=["finetune", "lp-ft"], epochs=2, img_size=64, batch_size=8,
                      per_class=3, engine="torch")
    studied = StudyTask(plan, report, str(synthetic), folder=str(tmp_path / "old study"))
    for task in (train, comp, studied):
        job = jobs.create(tmp_path / task.kind, task.kind, task.to_payload())
        assert tasks.from_payload(job.payload()["kind"], job.payload()) == task
    assert jobs.Job(tmp_path / "train").experiment_spec()["train"]["epochs"] == 4
    assert StudyTask(plan, report, "sample").where(tmp_path / "job") == tmp_path / "job"  # no folder: the job's
    assert studied.where(tmp_path / "job") == tmp_path / "old study"
    with pytest.raises(ValueError, match="unknown job kind"):
        tasks.from_payload("survey", {})


@pytest.fixture
def queue():
    q = LocalQueue(pools={"cpu": 1}, poll_s=0.05)
    yield q
    q.close(timeout=10)


def _wait_for(cond, timeout=60, every=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(every)
    return False


def test_a_job_in_a_worker_process_equals_training_in_process(synthetic, tmp_path, queue):
    job = _job(synthetic)
    queue.submit(job)
    status = queue.wait(job, 180)
    assert status["state"] == "done", (status, (job.folder / "worker.log").read_text()[-2000:])
    assert status["pid"] != os.getpid()  # it trained in another process
    report = data.scan_folder(synthetic)
    local = experiment.train(_spec(), report, tmp_path / "local")
    worker_model, run = runs.load(job.folder)
    assert [m["val_acc"] for m in run.metrics] == [m["val_acc"] for m in local.history.epochs]
    for (k, a), b in zip(worker_model.state_dict().items(), local.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k
    # progress events arrived in order, and the files say what the page shows
    kinds = [e["kind"] for e in job.events()]
    assert kinds[0] == "phase" and kinds[1] == "cache" and kinds[-1] == "end"
    assert [e["epoch"] for e in job.events() if e["kind"] == "epoch"] == [1, 2]
    assert job.cache_lines()[0].startswith("features cached")
    assert runs.load_predictions(job.folder).paths == [p for p, _ in local.val_items]
    assert not (job.folder / "checkpoint").exists()  # a finished run is its own files


def test_stop_ends_the_worker_and_keeps_the_best_epoch(synthetic, queue):
    job = _job(synthetic, spec=_spec(epochs=300, batch=4))
    queue.submit(job)
    assert _wait_for(lambda: len(job.metrics()) >= 1, 120), job.status()
    pid = job.status()["pid"]
    assert os.getpriority(os.PRIO_PROCESS, pid) >= min(19, max(10, os.getpriority(os.PRIO_PROCESS, 0)))  # yields the CPU
    queue.cancel(job)  # a running job: asked to stop
    status = queue.wait(job, 60)
    assert status["state"] == "stopped"
    assert 1 <= len(runs.read_metrics(job.folder)) < 300
    model, run = runs.load(job.folder)
    assert run.config["stopped"] is True


def test_the_queue_runs_one_job_at_a_time_in_order_and_one_per_lab(synthetic, queue):
    a, b, c = (_job(synthetic, name=f"run{i}", spec=_spec(epochs=1)) for i in range(3))
    lab_a = labs.Lab(a.payload()["lab"])
    for j in (a, b, c):
        queue.submit(j)
    assert queue.ahead(c) == 2 and queue.ahead(b) == 1  # one running or about to, one queued before
    twin = jobs.create(lab_a.runs_dir / "twin", "train", a.payload(), lab=lab_a.id)
    with pytest.raises(jobs.JobError, match="already has a job"):  # a double click, a second tab
        queue.submit(twin)
    queue.cancel(c)
    assert c.state == "cancelled"
    for j in (a, b):
        assert queue.wait(j, 180)["state"] == "done"
    sa, sb = a.status(), b.status()
    assert sa["finished"] <= sb["started"]  # FIFO and never two at once on one CPU slot
    assert not (c.folder / "model.safetensors").exists()


def test_a_worker_killed_mid_training_leaves_an_interrupted_run_that_resumes(synthetic, tmp_path, queue):
    job = _job(synthetic, spec=_spec(epochs=300, batch=4))
    queue.submit(job)
    assert _wait_for(lambda: len(job.metrics()) >= 2, 120), job.status()
    os.kill(job.status()["pid"], signal.SIGKILL)  # as if it ran out of memory
    assert _wait_for(lambda: "ended unexpectedly" in job.status().get("message", ""), 30), job.status()
    assert job.state == "interrupted" and "killed" in job.status()["message"]
    ck = runs.checkpoint_of(job.folder)
    assert ck is not None and runs.complete(ck)
    model, run = runs.load(job.folder)  # the interrupted run opens from its best epoch
    assert run.config["checkpoint"] and run.config["best_epoch"] >= 1
    out = tmp_path / "resumed"
    cli = subprocess.run([sys.executable, "-m", "vislab", "train", "--data", str(synthetic), "--resume",
                          str(job.folder), "--epochs", "1", "--out", str(out)], capture_output=True, text=True,
                         timeout=300, env={**os.environ})
    assert cli.returncode == 0, cli.stderr
    assert f"note: {experiment.INTERRUPTED_NOTE} ({run.config['best_epoch']})" in cli.stdout  # said, not only done
    resumed = json.loads((out / "config.json").read_text())
    assert Path(resumed["resumed_from"]) == job.folder.resolve() and runs.complete(out)
    assert resumed["plans"] == run.config["plans"]  # its last freeze plan goes on


def test_a_server_that_dies_takes_its_workers_with_it_and_the_run_reads_interrupted(synthetic, tmp_path):
    job = _job(synthetic, spec=_spec(epochs=300, batch=4))
    server = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from vislab.serving import jobs, localqueue\n"
        "q = localqueue.LocalQueue(pools={'cpu': 1}, poll_s=0.05); q.submit(jobs.Job(sys.argv[1]))\n"
        "time.sleep(600)\n"), str(job.folder)], env={**os.environ})
    try:
        assert _wait_for(lambda: len(job.metrics()) >= 1, 120), job.status()
        worker = job.status()["pid"]
        server.kill()  # no goodbye: SIGKILL
        server.wait(10)
        # a running job reads interrupted only once its worker process is gone
        assert _wait_for(lambda: job.state == "interrupted", 20), ("the worker outlived its server", worker)
        assert runs.checkpoint_of(job.folder) is not None
    finally:
        server.kill()


def test_a_restarted_queue_adopts_jobs_left_queued(synthetic):
    job = _job(synthetic, spec=_spec(epochs=1))
    q = LocalQueue(pools={"cpu": 1}, poll_s=0.05)
    try:
        assert q.adopt(labs.labs_dir()) == 1
        assert q.wait(job, 180)["state"] == "done"
        assert q.adopt(labs.labs_dir()) == 0  # done jobs are not run again
    finally:
        q.close()


def test_a_job_that_fails_says_why_and_the_queue_goes_on(synthetic, queue):
    bad = _job(synthetic, name="bad", spec=experiment.Spec(model="no_such_model_xyz", strategy="head",
                                                           train=TrainConfig(epochs=1)))
    good = _job(synthetic, name="good", spec=_spec(epochs=1))
    queue.submit(bad)
    queue.submit(good)
    assert queue.wait(bad, 120)["state"] == "error"
    assert "no_such_model_xyz" in bad.status()["message"]
    assert queue.wait(good, 180)["state"] == "done"


def test_progress_and_status_files_are_always_whole(synthetic, queue):
    job = _job(synthetic, spec=_spec(epochs=3, batch=4))
    queue.submit(job)
    seen = set()
    deadline = time.time() + 180
    while job.active and time.time() < deadline:  # read as fast as the page could: never a torn file
        for name in ("status.json", "progress.json"):
            if (job.folder / name).is_file():
                json.loads((job.folder / name).read_text())
        seen.add(job.progress().get("stage"))
    assert job.state == "done" and "training" in seen


def test_the_worker_refuses_a_folder_without_a_job(tmp_path):
    out = subprocess.run([sys.executable, "-m", "vislab.serving.worker", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and "job.json" in out.stderr


def test_the_app_never_imports_ray_without_a_ray_address():
    code = ("import os, sys; os.environ.pop('VISLAB_RAY_ADDRESS', None)\n"
            "import vislab.serving.jobs, vislab.serving.backends, pages._jobs\n"
            "q = vislab.serving.backends.make_queue(); assert type(q).__name__ == 'LocalQueue'; q.close()\n"
            "assert 'ray' not in sys.modules and 'vislab.serving.rayqueue' not in sys.modules, 'ray imported'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]


def test_queues_of_two_servers_see_each_others_jobs_and_never_both_start_one(synthetic):
    idle = {"cpu": 0}  # no slot: these queues hold jobs but start none, so the test reads the queue alone
    q1, q2 = LocalQueue(pools=idle, poll_s=0.05), LocalQueue(pools=idle, poll_s=0.05)
    try:
        a, b = _job(synthetic, name="a"), _job(synthetic, name="b")
        q1.submit(a)
        q2.submit(b)
        assert q2.ahead(b) == 1 and q1.ahead(a) == 0  # the other server's job counts, in order
        assert q1.active_for(b.payload()["lab"]).folder == b.folder  # read from the lab's folder
        twin = jobs.create(b.folder.parent / "twin", "train", b.payload(), lab=b.payload()["lab"])
        with pytest.raises(jobs.JobError, match="already has a job"):  # the same lab through the other server
            q1.submit(twin)
        q1.cancel(b)  # another server's queued job: claimed, so that server cannot start it meanwhile
        assert b.state == "cancelled" and not b.claim(claims.me(queue=q2.id))
        assert q2.ahead(a) == 0 and a.claim(claims.me(queue=q2.id)) and not a.claim(claims.me(queue=q1.id))
    finally:
        q1.close()
        q2.close()


def test_two_servers_adopting_one_lab_home_run_each_queued_job_once(synthetic):
    queued = [_job(synthetic, name=f"run{i}", spec=_spec(epochs=1, batch=8)) for i in range(3)]
    server = ("import sys, time; from vislab.serving import labs, localqueue\n"
              "q = localqueue.LocalQueue(pools={'cpu': 1}, poll_s=0.05); q.adopt(labs.labs_dir())\n"
              "time.sleep(600)\n")
    procs = [subprocess.Popen([sys.executable, "-c", server], env={**os.environ, "VISLAB_THREADS": "1"})
             for _ in range(2)]
    try:
        assert _wait_for(lambda: all(j.state == "done" for j in queued), 300), [j.status() for j in queued]
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
    for job in queued:  # one worker per job: one end event, one start line in the log
        assert [e["kind"] for e in job.events()].count("end") == 1, job.events()
        assert [e["epoch"] for e in job.events() if e["kind"] == "epoch"] == [1]
    owners = {job.claimed_by()["pid"] for job in queued}
    assert owners <= {p.pid for p in procs}


def test_a_spare_worker_waits_with_torch_imported_and_runs_the_next_job_like_a_fresh_one(synthetic, tmp_path):
    import threading

    made = []
    def script_run():  # as a Streamlit script run does: the thread that makes the queue ends soon after
        made.append(LocalQueue(pools={"cpu": 1}, poll_s=0.05, spares=True))
        time.sleep(2.0)

    maker = threading.Thread(target=script_run)
    maker.start()
    maker.join()
    q = made[0]
    try:
        assert _wait_for(lambda: "cpu" in q.spare_pids(), 10)
        time.sleep(1.0)  # a spare killed with the thread that made the queue would be dead by now
        first_spare = q.spare_pids()["cpu"]
        assert claims.worker_alive(first_spare)  # a vislab worker, as the liveness check knows one
        a, b = _job(synthetic), _job(synthetic)
        q.submit(a)
        q.submit(b)
        sa, sb = q.wait(a, 180), q.wait(b, 180)
        assert sa["state"] == sb["state"] == "done", (sa, sb, (a.folder / "worker.log").read_text()[-2000:])
        assert sa["pid"] == first_spare  # the waiting worker took the first job
        assert sb["pid"] not in (first_spare, os.getpid())  # a new spare (started at the hand-over) took the next
        local = experiment.train(_spec(), data.scan_folder(synthetic), tmp_path / "local")
        for job in (a, b):
            model, run = runs.load(job.folder)
            assert [m["val_acc"] for m in run.metrics] == [m["val_acc"] for m in local.history.epochs]
            for (k, x), y in zip(model.state_dict().items(), local.model.state_dict().values()):
                assert torch.allclose(x.float(), y.float(), atol=1e-5), k
        waiting = q.spare_pids()["cpu"]  # and one waits for the job after
        assert waiting not in (first_spare, sb["pid"]) and claims.worker_alive(waiting)
        assert os.getpriority(os.PRIO_PROCESS, waiting) >= min(19, max(10, os.getpriority(os.PRIO_PROCESS, 0)))
    finally:
        q.close(timeout=10)
    assert q.spare_pids() == {} and not claims.worker_alive(waiting)  # closing the queue ends its spare


def test_start_right_after_a_run_ends_is_accepted(synthetic):
    """The worker of a finished run stays in the queue's running list until the dispatcher next reaps it; a
    Start pressed in that moment (the page already shows the run as done) was refused as 'this lab already
    has a job' and left a cancelled row."""
    q = LocalQueue(pools={"cpu": 1}, poll_s=30)  # the dispatcher sleeps until woken: the window stays open
    try:
        lab = labs.create()
        first = q.submit(_job(synthetic, lab=lab, name="first"))
        _wait_for(lambda: first.state == "done", timeout=120)
        second = q.submit(_job(synthetic, lab=lab, name="second"))  # raised JobError before
        _wait_for(lambda: second.state == "done", timeout=120)
    finally:
        q.close(timeout=10)


def test_one_codec_turns_events_into_records_and_back():
    from vislab.serving import events
    from vislab.training.loop import Event

    kept = Event("epoch", 2, 5, metrics={"val_acc": 0.5}, phase="train", message="")
    rec = events.record(kept, 1.5, run="head")
    assert rec["run"] == "head" and rec["time"] == 1.5 and events.decode(rec) == kept
    batch = Event("batch", 2, 5, batch=3, batches=8, loss=0.25, phase="train")
    assert events.batch_event(events.progress_fields(batch)) == batch
    caching = events.Progress.of(events.progress_fields(Event("caching", 0, 5, phase="train", cached=40, to_cache=120)))
    assert (caching.stage, caching.cached, caching.to_cache, caching.epoch_now) == ("caching", 40, 120, 1)


class _Holding(BaseQueue):
    """A backend that holds jobs and runs none: the shared rules, read alone."""

    def __init__(self):
        super().__init__()
        self.held: list[jobs.Job] = []

    def _enqueue(self, job, lab, device, rec):
        self.held.append(job)

    def _held(self):
        return [(j, j.payload().get("lab")) for j in self.held]

    def _busy(self, job):
        return job in self.held


def test_a_lab_is_busy_while_its_held_job_says_queued_or_running_and_free_once_it_ended(synthetic):
    """The one refusal of every backend: a job whose process returned but whose end is not yet written (a Ray
    task's last messages on their way, a worker not yet reaped) still holds its lab; a finished one does not."""
    q = _Holding()
    first = q.submit(_job(synthetic, name="first"))
    lab = first.payload()["lab"]
    with pytest.raises(jobs.JobError, match="already has a job"):
        q.check_free(lab)
    first.write_status(state="running", driver=claims.me(queue=q.id))  # returned, its end still on its way
    second = jobs.create(first.folder.parent / "second", "train", first.payload(), lab=lab)
    with pytest.raises(jobs.JobError, match="already has a job"):
        q.submit(second)
    second.write_status(state="cancelled")  # as the page marks a refused job
    first.write_status(state="done")  # still held by the queue, but ended
    q.check_free(lab)
    assert q.active_for(lab) is None
