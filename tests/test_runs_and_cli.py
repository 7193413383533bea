import json

import pytest
import torch

from vislab import cli
from vislab.training import experiment, runs
from vislab.training.loop import TrainConfig


def test_vislab_train_writes_the_four_files(synthetic, tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["train", "--data", str(synthetic), "--model", "test_resnet", "--weights", "auto",
                   "--strategy", "partial", "--epochs", "2", "--img-size", "64", "--batch-size", "8",
                   "--out", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(runs.FILES + ("split.json",))
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics) == 2
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "seconds"):
        assert all(key in m for m in metrics)
    assert json.loads((out / "classes.json").read_text()) == ["class_0", "class_1", "class_2"]
    text = capsys.readouterr().out
    assert "random init" in text and "best val acc" in text


def test_saved_run_reloads_to_identical_outputs(synthetic, tmp_path):
    spec = experiment.Spec(model="test_efficientnet", strategy="full", head="mlp", weights="auto", img_size=64,
                           train=TrainConfig(epochs=1, batch_size=8, device="cpu"))
    report = __import__("vislab.data.folders", fromlist=["scan_folder"]).scan_folder(synthetic)
    result = experiment.train(spec, report, tmp_path / "run")
    model, run = runs.load(result.run_dir)
    x = torch.randn(3, 3, 64, 64)
    result.model.eval()
    with torch.no_grad():
        assert torch.equal(result.model(x), model(x))
    assert run.classes == report.classes and run.config["head_kind"] == "mlp"
    # what the Train page's runs table reads of a run folder (pages/_runs.lab_runs)
    assert runs.read_config(result.run_dir)["head_kind"] == "mlp"
    assert runs.read_metrics(result.run_dir) == result.history.epochs


@pytest.mark.parametrize("name, head", [("test_vit", "linear"), ("test_resnet", "attention"),
                                        ("mobilenet_v2", "attention")])
def test_a_rebuilt_run_is_the_model_a_fresh_run_built(tmp_path, name, head):
    """One builder, one order (weights, head, input size): the model `runs.load` rebuilds from a run folder
    takes the fresh model's state strictly and answers alike, a ViT at another size and the attention head's
    traced torchvision model included."""
    spec = experiment.Spec(model=name, strategy="partial", head=head, weights="random", img_size=64)
    model, info, phases = experiment.prepare(spec, 3)
    config = {"model": name, "head_kind": head, "data_config": info.data_config.to_dict(),
              "plans": [p.plan.to_dict() for p in phases]}
    runs.save(tmp_path / "run", model, config, [], ["a", "b", "c"])
    rebuilt, run = runs.load(tmp_path / "run")
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))
    assert {n for n, p in rebuilt.named_parameters() if p.requires_grad} == {
        n for n, p in model.named_parameters() if p.requires_grad}  # the last freeze plan too


def test_resuming_an_interrupted_run_says_so(synthetic, tmp_path, capsys):
    spec = experiment.Spec(model="test_resnet", strategy="head", weights="auto", img_size=64,
                           train=TrainConfig(epochs=1, batch_size=8, device="cpu"))
    report = __import__("vislab.data.folders", fromlist=["scan_folder"]).scan_folder(synthetic)
    done = experiment.train(spec, report, tmp_path / "done")
    _, run = runs.load(done.run_dir)
    killed = tmp_path / "killed"  # as a worker killed after its first epoch leaves it: only checkpoint/
    runs.save_checkpoint(killed, done.model.state_dict(), {**run.config, "best_epoch": 1, "checkpoint": True},
                         run.metrics, run.classes)
    assert not runs.complete(killed) and runs.checkpoint_of(killed) is not None
    capsys.readouterr()
    assert cli.main(["train", "--data", str(synthetic), "--resume", str(killed), "--epochs", "1",
                     "--out", str(tmp_path / "resumed")]) == 0
    out = capsys.readouterr().out
    assert f"note: {experiment.INTERRUPTED_NOTE} (1)" in out, out
    assert json.loads((tmp_path / "resumed" / "config.json").read_text())["resumed_from"] == str(killed.resolve())
    assert cli.main(["train", "--data", str(synthetic), "--resume", str(done.run_dir), "--epochs", "1",
                     "--out", str(tmp_path / "again")]) == 0
    assert experiment.INTERRUPTED_NOTE not in capsys.readouterr().out  # a finished run: no such note


def test_two_phase_records_both_phases(synthetic, tmp_path):
    spec = experiment.Spec(model="test_resnet", strategy="two-phase", weights="auto", img_size=64,
                           train=TrainConfig(epochs=3, lr=1e-2, batch_size=8, device="cpu"))
    report = __import__("vislab.data.folders", fromlist=["scan_folder"]).scan_folder(synthetic)
    result = experiment.train(spec, report, tmp_path / "run")
    phases = [m["phase"] for m in result.history.epochs]
    assert phases == ["head", "full", "full"]
    assert result.history.epochs[1]["lr"] == pytest.approx(1e-3)


def test_stop_flag_ends_training_early(synthetic, tmp_path):
    import threading

    stop = threading.Event()
    seen = []

    def on_event(e):
        seen.append(e.kind)
        if e.kind == "batch" and e.batch == 1:
            stop.set()  # Stop pressed during the first batch

    spec = experiment.Spec(model="test_resnet", strategy="head", weights="auto", img_size=64,
                           train=TrainConfig(epochs=5, batch_size=4, device="cpu"))
    report = __import__("vislab.data.folders", fromlist=["scan_folder"]).scan_folder(synthetic)
    result = experiment.train(spec, report, tmp_path / "run", on_event, stop)
    assert result.history.stopped and len(result.history.epochs) == 1 and result.history.epochs[0]["partial"]
    assert seen.count("batch") == 1


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "/no/such/place", "--epochs", "1", "--out", "x"], "no such file"),
    (["train", "--data", "sample", "--epochs", "0", "--out", "x"], "must be positive"),
    (["train", "--data", "sample", "--epochs", "1", "--strategy", "sideways", "--out", "x"], "invalid choice"),
    (["train", "--data", "sample", "--model", "no_such_net", "--epochs", "1", "--out", "x"], "unknown model"),
    (["data", "check", "/no/such/place"], "no such file"),
    (["train", "--data", "sample", "--epochs", "1", "--lr", "nan", "--out", "x"], "finite"),
    (["train", "--data", "sample", "--epochs", "1", "--aug-views", "-1", "--out", "x"], "0 or more"),
    (["train", "--data", "sample", "--epochs", "1", "--aug-views", "2", "--out", "x"], "add --augment"),
])
def test_bad_arguments_give_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # `--out x` is relative to here, and a failed command leaves no x behind
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not any((tmp_path / "cwd").iterdir())


def test_out_that_is_a_file_or_holds_a_run_is_refused_before_training(synthetic, tmp_path, capsys):
    args = ["train", "--data", str(synthetic), "--model", "test_resnet", "--weights", "auto", "--epochs", "1",
            "--img-size", "64"]
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    assert cli.main(args + ["--out", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err and a_file.read_text() == "keep me"
    assert cli.main(args + ["--out", str(tmp_path / "run")]) == 0
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert cli.main(args + ["--seed", "3", "--out", str(tmp_path / "run")]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before  # nothing overwritten
    assert cli.main(["export", "--run", str(tmp_path / "run"), "--format", "torchscript",
                     "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_models_command_lists_catalog(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("alexnet", "vgg16_bn", "resnet50", "mobilenet_v2", "vit_tiny_patch16_224", "convnext_atto"):
        assert name in out
    from vislab.models import catalog, weights

    rows = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    for e in catalog.CATALOG:  # each row ends with where its weights come from
        status = weights.status(e.name, e.source)
        assert rows[e.name].rstrip().endswith(f"{status.source} ({status.note})" if status.available and status.note
                                              else status.source or "none: random init only"), rows[e.name]


def test_training_is_seeded_and_reproducible(synthetic, tmp_path):
    from vislab.data import folders as data

    report = data.scan_folder(synthetic)
    spec = experiment.Spec(model="test_resnet", strategy="partial", weights="auto", img_size=64,
                           train=TrainConfig(epochs=2, batch_size=8, device="cpu", seed=3))
    a = experiment.train(spec, report, None)
    b = experiment.train(spec, report, None)
    strip = lambda ms: [{k: v for k, v in m.items() if k != "seconds"} for m in ms]  # noqa: E731
    assert strip(a.history.epochs) == strip(b.history.epochs)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
