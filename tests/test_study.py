"""The transfer study: nested fractions, a row that is its own `vislab train`, resume, the CLI's refusals."""

import json
import shlex
import threading

import pytest

from vislab import cli
from vislab.data import folders as data
from vislab.training import runs, study

PLAN = dict(model="test_resnet", epochs=2, img_size=64, batch_size=8, engine="torch")


@pytest.fixture(scope="module")
def report(synthetic):
    return data.scan_folder(synthetic)


def test_fractions_are_nested_stratified_and_leave_validation_alone(report):
    for seed in (0, 1):
        train, val = data.split(report.items, 0.2, seed)
        sets = {f: data.fraction_of(train, f, seed) for f in (0.1, 0.25, 0.5, 1.0)}
        assert sets[1.0] == train
        for small, large in ((0.1, 0.25), (0.25, 0.5), (0.5, 1.0)):
            assert set(sets[small]) <= set(sets[large])  # nested
        for f, items in sets.items():
            for label in range(len(report.classes)):
                n = sum(1 for _, y in train if y == label)
                assert sum(1 for _, y in items if y == label) == max(1, round(n * f))  # stratified
    # another seed draws another subset (the fraction is not simply the first files)
    train0, _ = data.split(report.items, 0.2, 0)
    assert data.fraction_of(train0, 0.5, 0) != data.fraction_of(train0, 0.5, 1)
    with pytest.raises(data.DataError):
        data.fraction_of(train0, 0.0)


def test_the_grid_counts_depth_as_thaw_last_does(report):
    n = study.body_stages("test_resnet")
    plan = study.Plan(**PLAN, depths=[0, 2, n], fractions=[0.5, 1.0], seeds=[0, 1])
    points = plan.points(n)
    assert len(points) == 2 * 2 * (3 + 1)  # seeds x fractions x (depths + scratch)
    assert points[0].fraction == 1.0  # the largest fraction first
    specs = {p.depth: plan.spec(p, n) for p in points if p.strategy == "finetune"}
    assert (specs[0].strategy, specs[2].strategy, specs[2].thaw_last, specs[n].strategy) == (
        "head", "partial", 2, "full")
    assert study.default_depths(12) == [0, 1, 2, 6, 12] and study.default_depths(1) == [0, 1]
    with pytest.raises(ValueError, match="outside"):
        study.Plan(**PLAN, depths=[n + 1]).check(n)


def test_a_study_row_is_the_single_run_its_command_makes(report, synthetic, tmp_path):
    """The 50 % rows train on features the study took from the 100 % rows' cache (shared, not recomputed);
    each row still equals the run of its own command in a fresh pool."""
    plan = study.Plan(**PLAN, depths=[0, 1], fractions=[0.5, 1.0], seeds=[1], strategies=["finetune"])
    result = study.run(plan, report, tmp_path / "study", data_arg=str(synthetic))
    assert [r.point.name for r in result.rows] == ["finetune_d1_f100_s1", "finetune_d0_f100_s1",
                                                   "finetune_d1_f50_s1", "finetune_d0_f50_s1"]
    cached = [runs.read_config(r.run_dir)["feature_cache"][0] for r in result.rows]
    assert "continued from the cached output of" in cached[1], cached  # head only: from the depth-1 cut
    assert all("shared with an earlier run" in line for line in cached[2:]), cached  # 50 %: rows of 100 %
    for row in result.rows:
        alone = tmp_path / f"alone_{row.point.name}"
        argv = shlex.split(row.command)
        argv[argv.index("--out") + 1] = str(alone)
        assert cli.main(argv[1:]) == 0
        ran, single = runs.read_metrics(row.run_dir), runs.read_metrics(alone)
        assert [m["val_acc"] for m in ran] == [m["val_acc"] for m in single]
        assert [m["val_loss"] for m in ran] == pytest.approx([m["val_loss"] for m in single], abs=1e-6)
        assert runs.load_split(row.run_dir) == runs.load_split(alone)  # same split, same nested fraction
        assert row.train_images == runs.read_config(alone)["train_size"]
    assert result.rows[2].train_images < result.rows[0].train_images


def test_the_reference_strategies_are_their_single_runs_too(report, synthetic, tmp_path):
    """lp-ft and llrd rows (every stage thawed) and a surgical row (one stage) say so in their commands and equal
    those runs; the surgical row trained the head and that one stage only."""
    plan = study.Plan(**PLAN, depths=[0, 2], fractions=[1.0], seeds=[0], strategies=["surgical", "lp-ft", "llrd"])
    result = study.run(plan, report, tmp_path / "study", data_arg=str(synthetic))
    assert [r.point.strategy for r in result.rows] == ["surgical", "lp-ft", "llrd"]  # no surgical depth 0
    assert "--strategy surgical --thaw-last 2" in result.rows[0].command
    assert "--strategy two-phase" in result.rows[1].command and "--layer-decay 0.75" in result.rows[2].command
    body = [s for s, on in runs.read_config(result.rows[0].run_dir)["plans"][0]["trainable"].items()]
    trained = [s for s, on in runs.read_config(result.rows[0].run_dir)["plans"][0]["trainable"].items() if on]
    assert trained == [body[-3], "head"], trained  # the second stage from the head, and the head
    for row in result.rows:
        argv = shlex.split(row.command)
        argv[argv.index("--out") + 1] = str(tmp_path / row.point.name)
        assert cli.main(argv[1:]) == 0
        assert [m["val_acc"] for m in runs.read_metrics(row.run_dir)] == [
            m["val_acc"] for m in runs.read_metrics(tmp_path / row.point.name)]
        assert runs.read_config(row.run_dir)["train"]["layer_decay"] == (0.75 if row.point.strategy == "llrd" else None)


def test_resume_trains_only_the_missing_rows(report, tmp_path):
    plan = study.Plan(**PLAN, depths=[0, 1], fractions=[1.0], seeds=[0, 1], strategies=["finetune"])
    stop = threading.Event()
    first = study.run(plan, report, tmp_path, on_row=lambda s: stop.set() if len(s.rows) == 2 else None,
                      stop=stop)
    assert len(first.rows) == 2
    kept = json.loads((tmp_path / "study.json").read_text())["rows"]
    trained = []
    second = study.run(plan, report, tmp_path, on_event=lambda name, e: trained.append(name) if e.kind == "end"
                       else None)
    assert sorted(set(trained)) == ["finetune_d0_f100_s1", "finetune_d1_f100_s1"]  # only the missing ones
    assert [r.point.name for r in second.rows] == [p.name for p in plan.points(study.body_stages("test_resnet"))]
    assert json.loads((tmp_path / "study.json").read_text())["rows"][:2] == kept  # finished rows untouched
    assert (tmp_path / "study.csv").read_text().count("\n") == 1 + 4
    with pytest.raises(ValueError, match="another study"):
        study.run(study.Plan(**{**PLAN, "epochs": 3}, depths=[0]), report, tmp_path)


def test_noise_is_called_noise():
    def row(depth, acc, seed):
        return study.Row(study.Point("finetune", depth, 1.0, seed), acc, acc, 1.0, 1, 1.0, 10, 40, 20, None, "")

    close = [row(0, 0.80, 0), row(0, 0.70, 1), row(1, 0.85, 0), row(1, 0.75, 1)]  # 5 points apart, spread 7
    assert "(within noise: depth 0)" in study.verdicts(close)[0]
    apart = [row(0, 0.50, 0), row(0, 0.52, 1), row(1, 0.90, 0), row(1, 0.92, 1)]
    line = study.verdicts(apart)[0]
    assert "thawing 1 stage(s) is best" in line and "within noise" not in line and "+40.0 ±" in line
    assert "points over 2 seeds" in line
    single = study.verdicts([row(0, 0.5, 0), row(1, 0.9, 0)])[0]
    assert "one seed, so no spread measured" in single
    surgical = [study.Row(study.Point("surgical", d, 1.0, s), acc, acc, 1.0, 1, 1.0, 10, 40, 20, None, "")
                for d, acc, s in ((1, 0.60, 0), (1, 0.62, 1), (3, 0.95, 0), (3, 0.93, 1))]
    lines = study.verdicts(apart + surgical)
    assert len(lines) == 2 and "training only stage 3 from the head (surgical)" in lines[1]
    assert "+43.0 ±" in lines[1]  # 94 % against the head only's 51 %
    drawn, refs = study.figure_data(apart + surgical)
    assert drawn["surgical, one stage: 100% of the images"] == [(1, pytest.approx(0.61), pytest.approx(0.01414, abs=1e-4)),
                                                               (3, pytest.approx(0.94), pytest.approx(0.01414, abs=1e-4))]
    assert not refs  # surgical is a line over depth, not a reference


@pytest.mark.parametrize("args, says", [
    (["--depths", "0,x"], "--depths takes whole numbers"),
    (["--fractions", "0,1"], "--fractions lie in (0, 1]"),
    (["--strategies", "finetune,magic"], "--strategies: choose from"),
    (["--depths", "0,99"], "outside 0-"),
])
def test_bad_study_arguments_say_one_line_and_write_nothing(synthetic, tmp_path, capsys, args, says):
    out = tmp_path / "never"
    rc = cli.main(["study", "--data", str(synthetic), "--model", "test_resnet", "--epochs", "1", "--out", str(out),
                   *args])
    err = capsys.readouterr().err
    assert rc == 2 and says in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_the_measured_similarity_refuses_a_head_that_is_not_imagenets(report):
    """A random-init or non-ImageNet head cannot say how ImageNet-like the images look: no verdict, a reason."""
    from vislab.teaching import measured

    sim = measured.similarity("test_resnet", report, n=6)  # no pretrained weights for the test model
    assert sim.verdict is None and sim.note.startswith("not measured")
    confident = measured.Similarity(0.6, 40, [("velvet", 30)])
    assert confident.verdict == "similar" and measured.Similarity(0.1, 40, []).verdict == "different"
    row = study.Row(study.Point("finetune", 0, 1.0, 0), 0.9, 0.9, 0.3, 1, 1.0, 10, 40, 20, None, "")
    lines = measured.matrix_against_study(60, confident, [row])
    assert "“Train only the new head”" in lines[0] and lines[1].startswith("Measured: 100% of the training images")


def test_the_study_command_offers_the_librarys_choices():
    from vislab.cli import study as command
    from vislab.models import freezing

    assert command.STUDY_STRATEGIES == study.STRATEGIES and command.BN_CHOICES == freezing.BN_MODES
