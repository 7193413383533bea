"""The CLI's edges (issue 22): a failed command writes nothing, errors name the real command, and help and
argument errors answer without importing torch."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vislab import cli, _fileio as fileio
from vislab.cli import _common, explain as explain_command
from vislab.models import freezing, heads
from vislab.training import runs, loop as training

REPO = Path(__file__).resolve().parents[1]
VISLAB = Path(sys.executable).with_name("vislab")  # the installed console script, beside the venv's python
TRAIN = ["train", "--model", "test_resnet", "--weights", "auto", "--epochs", "1", "--img-size", "64",
         "--batch-size", "8"]


def _run(argv):
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse's errors
        return exc.code


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "in" / "cat.png"
    path.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def _second_write_fails(monkeypatch):
    """The first file is written, the second cannot be (a full disk)."""
    real, calls = fileio.write_bytes, []

    def write_bytes(path, blob):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return real(path, blob)

    monkeypatch.setattr(fileio, "write_bytes", write_bytes)


def _boom(*args, **kwargs):
    raise RuntimeError("boom in the middle of training")


# ---- 1. a failed command leaves no --out behind ---------------------------------------------------------
@pytest.mark.parametrize("case", ["train-bad-model", "train-bad-data", "train-crash-mid-run", "train-bad-argument",
                                  "compare-bad-strategy", "compare-crash", "export-bad-model", "explain-bad-model",
                                  "explain-write-fails"])
def test_a_failed_command_leaves_no_out_folder_behind(case, synthetic, image, tmp_path, monkeypatch, capsys):
    new = tmp_path / "new"  # neither it nor anything under it exists: whatever the command made must go
    out = new / "deeper" / "out"
    data = ["--data", str(synthetic)]
    if case == "train-bad-model":
        argv = TRAIN + data + ["--model", "no_such_model", "--out", str(out)]
    elif case == "train-bad-data":
        argv = TRAIN + ["--data", str(tmp_path / "no_such_data"), "--out", str(out)]
    elif case == "train-crash-mid-run":  # the split is written before training starts; then it fails
        monkeypatch.setattr(training, "fit", _boom)
        argv = TRAIN + data + ["--out", str(out)]
    elif case == "train-bad-argument":
        argv = TRAIN + data + ["--aug-views", "2", "--out", str(out)]
    elif case == "compare-bad-strategy":
        argv = ["compare", *data, "--model", "test_resnet", "--strategies", "head,sideways", "--epochs", "1",
                "--out", str(out)]
    elif case == "compare-crash":
        monkeypatch.setattr(training, "fit", _boom)
        argv = ["compare", *data, "--model", "test_resnet", "--strategies", "head", "--epochs", "1",
                "--img-size", "64", "--batch-size", "8", "--out", str(out)]
    elif case == "export-bad-model":
        argv = ["export", "--model", "no_such_model", "--format", "onnx", "--out", str(out / "m.onnx")]
    elif case == "explain-bad-model":
        argv = ["explain", "--model", "no_such_model", "--view", "cam", "--images", str(image), "--out", str(out)]
    else:
        _second_write_fails(monkeypatch)
        argv = ["explain", "--model", "test_resnet", "--weights", "random", "--view", "cam", "--images", str(image),
                "--out", str(out)]
    rc = _run(argv)
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not new.exists(), sorted(str(p.relative_to(tmp_path)) for p in new.rglob("*"))


def test_a_failure_keeps_the_folder_the_user_had_and_only_removes_what_it_added(synthetic, tmp_path, monkeypatch,
                                                                               capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    monkeypatch.setattr(training, "fit", _boom)
    assert cli.main(TRAIN + ["--data", str(synthetic), "--out", str(out)]) == 1
    assert "boom" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(TRAIN + ["--data", str(synthetic), "--model", "no_such_model", "--out", str(empty)]) == 2
    assert empty.is_dir() and not any(empty.iterdir())


def test_an_interrupted_train_keeps_its_checkpoint_and_says_how_to_resume(synthetic, tmp_path, monkeypatch, capsys):
    real_fit = training.fit

    def fit(*args, **kwargs):  # Ctrl-C once the first epoch's checkpoint is on disk
        real_fit(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "fit", fit)
    assert cli.main(TRAIN + ["--data", str(synthetic), "--epochs", "2", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "kept in" in err and "--resume" in err
    assert runs.checkpoint_of(tmp_path / "run") is not None  # the promise of checkpoints: an interrupted run is kept

    def fit_early(*args, **kwargs):  # Ctrl-C before any epoch: nothing worth keeping
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "fit", fit_early)
    assert cli.main(TRAIN + ["--data", str(synthetic), "--out", str(tmp_path / "early")]) == 2
    assert "nothing was saved" in capsys.readouterr().err and not (tmp_path / "early").exists()


# ---- 2. errors name the real command --------------------------------------------------------------------
@pytest.mark.parametrize("argv, names", [
    (["explain", "--run", "r", "--view", "cam", "--images", "a.png", "--out", "o", "--bogus"], "vislab explain --help"),
    (["train", "--data", "sample", "--epochs", "1", "--out", "o", "stray"], "vislab train --help"),
    (["weights", "import", "--bogus"], "vislab weights import --help"),
    (["weights", "status", "x", "--bogus"], "vislab weights status --help"),
    (["--bogus"], "vislab --help"),
])
@pytest.mark.parametrize("how", ["vislab", "python -m vislab"])
def test_argument_errors_name_the_real_command(argv, names, how, tmp_path):
    tmp_path = tmp_path / "cwd"
    tmp_path.mkdir()
    prefix = [str(VISLAB)] if how == "vislab" else [sys.executable, "-m", "vislab"]
    done = subprocess.run(prefix + argv, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]  # one line, no traceback
    assert f"(see `{names}`)" in done.stderr, done.stderr
    assert "vislab vislab" not in done.stderr
    assert not any(tmp_path.iterdir())  # nothing written


# ---- 3. help and argument errors do not import torch ------------------------------------------------------
HELP_PROBE = r"""
import contextlib, io, sys
from vislab import cli
heavy = ("torch", "timm", "torchvision")
for argv in %r:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            rc = cli.main(argv)
        except SystemExit as exc:
            rc = exc.code
    loaded = [m for m in heavy if m in sys.modules]
    print(" ".join(argv), "->", rc, ",".join(loaded) or "none")
"""
HELP_ARGVS = [["--help"], ["train", "--help"], ["compare", "--help"], ["export", "--help"], ["explain", "--help"],
              ["models", "--help"], ["weights", "--help"], ["weights", "import", "--help"], ["data", "check", "--help"],
              ["engines", "prepare", "--help"], ["train", "--epochs", "0", "--data", "x", "--out", "o"],
              ["train", "--strategy", "sideways"], ["explain", "--bogus"], ["--bogus"],
              ["train", "--data", "d", "--epochs", "1", "--aug-views", "2", "--out", "o"],  # errors of cmd_train's
              ["train", "--data", "d", "--epochs", "1", "--ray", "local", "--resume", "r", "--out", "o"],
              ["compare", "--data", "d", "--epochs", "1", "--strategies", "head,sideways", "--out", "o"]]


def test_help_and_argument_errors_do_not_import_torch(tmp_path):
    tmp_path = tmp_path / "cwd"
    tmp_path.mkdir()
    done = subprocess.run([sys.executable, "-c", HELP_PROBE % (HELP_ARGVS,)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    helps = sum("--help" in argv for argv in HELP_ARGVS)
    assert len(lines) == len(HELP_ARGVS) and all(line.endswith(" none") for line in lines), done.stdout
    assert [line.split(" -> ")[1].split()[0] for line in lines] == ["0"] * helps + ["2"] * (len(lines) - helps)
    assert not any(tmp_path.iterdir())


def test_the_parser_offers_the_library_choices():  # spelled in the cli so that the parser needs no torch
    from vislab.models import factory
    from vislab.training import engines
    from vislab.views import explain

    assert _common.STRATEGIES == freezing.STRATEGIES
    assert _common.BN_MODES == freezing.BN_MODES
    assert _common.HEAD_KINDS == heads.HEAD_KINDS
    assert _common.WEIGHT_CHOICES == factory.WEIGHT_CHOICES
    assert explain_command.VIEWS == explain.VIEWS and _common.ENGINES == engines.ENGINES
    actions = {a.dest: a for a in cli.build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    assert tuple(actions["strategy"].choices) == freezing.STRATEGIES
    assert tuple(actions["bn"].choices) == freezing.BN_MODES and tuple(actions["head"].choices) == heads.HEAD_KINDS
