"""The Ray backend (vislab.serving.rayqueue) on a real local Ray instance, started once for the module: the same
result as the local worker, progress in order, Stop, a dead worker, the CLI's path and the app's queue."""

import os
import signal
import time

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]'): Ray backend tests skipped")

import torch  # noqa: E402

from tests.test_jobs import _job, _spec, _wait_for  # noqa: E402
from vislab.data import folders as data  # noqa: E402
from vislab.training import experiment, runs
from vislab.serving import backends, rayqueue
from vislab.training.tasks import CompareTask, TrainTask

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace=rayqueue.NAMESPACE,
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def rq(cluster):
    seen = []
    q = rayqueue.RayQueue(on_message=lambda job, kind, data: seen.append((job.id, kind, data)))
    q.seen = seen
    yield q
    q.close(timeout=20)


def _same_weights(a, b):
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x.float(), y.float(), atol=1e-5), k


def test_a_ray_job_through_the_apps_queue_equals_training_in_process(synthetic, tmp_path, cluster, monkeypatch):
    monkeypatch.setenv("VISLAB_RAY_ADDRESS", "auto")
    q = backends.make_queue()  # what pages/_jobs.queue() builds
    assert isinstance(q, rayqueue.RayQueue)
    seen = []
    q.on_message = lambda job, kind, data: seen.append((kind, data))
    try:
        job = _job(synthetic)
        q.submit(job)
        status = q.wait(job, 300)
    finally:
        q.close(timeout=20)
    assert status["state"] == "done", status
    assert status["backend"] == "ray" and status["resources"] == {"num_cpus": 1, "num_gpus": 0}
    assert status["worker"]["pid"] != os.getpid()  # it trained in a Ray worker
    local = experiment.train(_spec(), data.scan_folder(synthetic), tmp_path / "local")
    model, run = runs.load(job.folder)
    assert [m["val_acc"] for m in run.metrics] == [m["val_acc"] for m in local.history.epochs]
    _same_weights(model, local.model)
    # the events came through the hub in order, and the server wrote them where the pages read them
    kinds = [k for k, _ in seen]
    assert kinds[0] == "started" and kinds[-1] == "end"
    events = [d for k, d in seen if k == "event"]
    assert [e["kind"] for e in events][0] == "phase" and events[-1]["kind"] == "end"
    assert [e["epoch"] for e in events if e["kind"] == "epoch"] == [1, 2]
    assert job.events() == events
    seconds = [d["seconds"] for k, d in seen if k == "progress"]
    assert seconds == sorted(seconds) and len(seconds) >= 3
    assert job.progress()["stage"] == "finished"
    assert runs.load_predictions(job.folder).paths == [p for p, _ in local.val_items]


def test_the_cli_path_runs_one_job_on_ray_and_relays_its_epochs(synthetic, tmp_path, cluster):
    report = data.scan_folder(synthetic)
    epochs = []
    out = tmp_path / "cli_run"
    out.mkdir()  # the CLI's --out folder exists (empty) when the job is made
    status = rayqueue.run_job(out, TrainTask(_spec(epochs=1), report),
                              on_event=lambda e, run: epochs.append((e.epoch, run)) if e.kind == "epoch" else None)
    assert status["state"] == "done" and runs.complete(out)
    assert epochs == [(1, None)]
    local = experiment.train(_spec(epochs=1), report, tmp_path / "local")
    _same_weights(runs.load(out)[0], local.model)


def test_stop_ends_the_ray_task_and_keeps_the_best_epoch(synthetic, rq):
    job = _job(synthetic, spec=_spec(epochs=300, batch=4))
    rq.submit(job)
    assert _wait_for(lambda: len(job.metrics()) >= 1, 180), job.status()
    assert job.state == "running" and rq.running_count() == 1
    rq.cancel(job)
    status = rq.wait(job, 90)
    assert status["state"] == "stopped"
    assert 1 <= len(runs.read_metrics(job.folder)) < 300
    model, run = runs.load(job.folder)
    assert run.config["stopped"] is True
    assert rq.running_count() == 0  # the task ended (its ref is done), not only the files


def test_a_ray_worker_that_dies_mid_job_leaves_an_interrupted_run_with_its_best_epoch(synthetic, rq):
    job = _job(synthetic, spec=_spec(epochs=300, batch=4))
    rq.submit(job)
    assert _wait_for(lambda: len(job.metrics()) >= 2, 180), job.status()
    os.kill(job.status()["worker"]["pid"], signal.SIGKILL)  # the node (its worker process) dies
    assert _wait_for(lambda: job.status().get("state") == "interrupted", 60), job.status()
    assert "Ray worker ended" in job.status()["message"]
    ck = runs.checkpoint_of(job.folder)
    assert ck is not None and runs.complete(ck)
    model, run = runs.load(job.folder)
    assert run.config["best_epoch"] >= 1


def test_a_queued_ray_job_counts_whats_ahead_and_cancels(synthetic, rq):
    a, b, c = (_job(synthetic, name=f"run{i}", spec=_spec(epochs=200, batch=4)) for i in range(3))
    for j in (a, b, c):
        rq.submit(j)
    assert _wait_for(lambda: a.state == "running" and b.state == "running", 180), (a.status(), b.status())
    time.sleep(1)
    assert c.state == "queued" and rq.ahead(c) == 2  # two CPUs, one each: Ray holds the third back
    rq.cancel(c)
    assert c.state == "cancelled"
    for j in (a, b):
        rq.cancel(j)
        assert rq.wait(j, 90)["state"] == "stopped"
    assert not (c.folder / "model.safetensors").exists() and not c.events()


def test_a_comparison_runs_on_ray_as_it_does_in_process(synthetic, tmp_path, cluster):
    from vislab.training import compare

    report = data.scan_folder(synthetic)
    configs = [compare.Config.preset("head"), compare.Config.preset("full")]
    names = []
    out = tmp_path / "cmp"
    task = CompareTask("test_resnet", report, configs, 1, img_size=64, batch_size=8, seed=1, per_class=6)
    status = rayqueue.run_job(out, task,
        on_event=lambda e, run: names.append(run) if e.kind == "epoch" else None)
    assert status["state"] == "done", status
    assert names == ["head", "full"]  # each run's epochs came back under its name
    local = compare.run("test_resnet", report, configs, 1, tmp_path / "local", img_size=64, batch_size=8, seed=1,
                        per_class=6)
    _, _, rows = compare.load(out)
    assert [[m["val_acc"] for m in r.metrics] for r in rows] == [[m["val_acc"] for m in r.metrics] for r in local]
    assert [r.confusion for r in rows] == [r.confusion for r in local]


def test_vislab_train_with_ray_trains_on_the_cluster_and_prints_what_the_local_run_prints(synthetic, tmp_path, cluster,
                                                                                        capsys):
    from vislab import cli

    common = ["train", "--data", str(synthetic), "--model", "test_resnet", "--weights", "auto", "--img-size", "64",
              "--epochs", "2", "--batch-size", "8", "--seed", "3", "--engine", "torch"]
    assert cli.main(common + ["--out", str(tmp_path / "on_ray"), "--ray", "auto"]) == 0
    printed = capsys.readouterr().out
    assert "epoch  2" in printed and "(trained on Ray)" in printed, printed
    assert cli.main(common + ["--out", str(tmp_path / "here")]) == 0
    _same_weights(runs.load(tmp_path / "on_ray")[0], runs.load(tmp_path / "here")[0])
    assert cli.main(common + ["--out", str(tmp_path / "again"), "--ray", "auto", "--resume", str(tmp_path / "here")]) == 2
    assert not (tmp_path / "again").exists()  # refused before anything was written


def test_the_hub_hands_out_each_jobs_messages_in_the_order_they_were_sent(cluster):
    """An async actor may run one caller's `put`s out of order: a task's final progress arrived after its "end"
    and the job finished before its last messages were written. The hub holds a message back until the ones
    sent before it are there."""
    hub = rayqueue._Hub.remote()
    try:
        ray.get([hub.put.remote("a", 2, "progress", {}), hub.put.remote("b", 1, "started", {}),
                 hub.put.remote("a", 1, "started", {})])
        assert [(j, n) for j, n, _, _ in ray.get(hub.take.remote(0))] == [("a", 1), ("a", 2), ("b", 1)]
        ray.get(hub.put.remote("a", 4, "end", {}))
        assert ray.get(hub.take.remote(0)) == []  # 3 is still on its way
        ray.get(hub.put.remote("a", 3, "event", {}))
        assert [n for _, n, _, _ in ray.get(hub.take.remote(0.5))] == [3, 4]
    finally:
        ray.kill(hub)


def test_a_study_spreads_its_seeds_over_the_cluster_and_equals_the_local_study(synthetic, tmp_path, cluster):
    """One Ray task per seed (each seed's depths share one feature cache inside its task): every row equals
    the row the same study trains in one process, and the two seeds were trained by two processes."""
    from vislab.training import study
    from vislab.training.tasks import StudyTask

    report = data.scan_folder(synthetic)
    plan = study.Plan(model="test_resnet", epochs=1, img_size=64, batch_size=8, engine="torch", depths=[0, 1],
                      fractions=[1.0], seeds=[0, 1], strategies=["finetune"])
    ended = []
    status = rayqueue.run_job(tmp_path / "job", StudyTask(plan, report, "synthetic", folder=str(tmp_path / "ray")),
                              on_event=lambda e, run: ended.append(run) if e.kind == "end" else None)
    assert status["state"] == "done", status
    spread = study.load(tmp_path / "ray")
    local = study.run(plan, report, tmp_path / "local")
    assert [r.point for r in spread.rows] == [r.point for r in local.rows] == plan.points(
        study.body_stages("test_resnet"))  # every row, in the plan's order
    assert [r.best_val_acc for r in spread.rows] == [r.best_val_acc for r in local.rows]
    assert [r.final_val_loss for r in spread.rows] == pytest.approx([r.final_val_loss for r in local.rows], abs=1e-6)
    assert sorted(ended) == sorted(p.name for p in plan.points(study.body_stages("test_resnet")))  # relayed
    by_seed = {seed: {r.worker for r in spread.rows if r.point.seed == seed} for seed in (0, 1)}
    assert all(len(w) == 1 for w in by_seed.values()), by_seed  # a seed's rows stay together (shared cache)
    assert by_seed[0] != by_seed[1], by_seed  # the seeds were separate tasks
    assert "continued from the cached output of" in runs.read_config(spread.rows[1].run_dir)["feature_cache"][0]
