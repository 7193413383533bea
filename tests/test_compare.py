"""The comparison runner: one table, matching the individual runs' own metrics files."""

import csv
import json
import re
import time

import pytest
import torch

from vislab import cli
from vislab.training import compare
from vislab.data import folders as data


def test_compare_cli_writes_a_table_that_matches_each_runs_metrics(synthetic, tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = cli.main(["compare", "--data", str(synthetic), "--model", "test_resnet", "--strategies",
                   "head,partial,full,scratch", "--epochs", "2", "--img-size", "64", "--batch-size", "8",
                   "--out", str(out)])
    assert rc == 0
    with open(out / "comparison.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == ["head", "partial", "full", "scratch"]
    for row in table:
        metrics = json.loads((out / row["run"] / "metrics.json").read_text())
        assert float(row["final val acc"]) == pytest.approx(metrics[-1]["val_acc"])
        assert float(row["final val loss"]) == pytest.approx(metrics[-1]["val_loss"])
        assert float(row["best val acc"]) == pytest.approx(max(m["val_acc"] for m in metrics))
    by_name = {r["run"]: r for r in table}
    assert int(by_name["head"]["trainable params"]) < int(by_name["partial"]["trainable params"]) < \
        int(by_name["full"]["trainable params"])
    assert by_name["head"]["BN layers moved"] == "0" and int(by_name["scratch"]["BN layers moved"]) > 0
    assert "| head |" in capsys.readouterr().out


def test_runs_with_the_same_frozen_prefix_share_cached_features(synthetic, tmp_path):
    configs = [compare.Config("head a", "head", lr=1e-3), compare.Config("head b", "head", lr=1e-2)]
    rows = compare.run("test_resnet", data.scan_folder(synthetic), configs, 1, tmp_path, img_size=64,
                       batch_size=8)
    assert "run once" in rows[0].cache[0] and "shared with an earlier run" in rows[1].cache[0]
    model_name, classes, loaded = compare.load(tmp_path)
    assert model_name == "test_resnet" and [r.config.name for r in loaded] == ["head a", "head b"]
    assert loaded[0].metrics == rows[0].metrics and loaded[0].model is not None


def test_compare_rejects_duplicate_names_and_unknown_strategies(synthetic, tmp_path, capsys):
    with pytest.raises(ValueError, match="own name"):
        compare.run("test_resnet", data.scan_folder(synthetic), [compare.Config("x"), compare.Config("x")], 1, None)
    rc = cli.main(["compare", "--data", str(synthetic), "--strategies", "head,sideways", "--epochs", "1",
                   "--out", str(tmp_path)])
    assert rc == 2 and "unknown strategy sideways" in capsys.readouterr().err


def test_a_custom_freeze_plan_is_compared_too(synthetic, tmp_path):
    from vislab.models import freezing, factory as models

    model, _ = models.create_model("test_resnet", 3, weights_choice="random")
    plan = freezing.preset(model, "head")[0]
    plan.trainable["layer2"] = True  # a plan no preset gives: thaw layer2 only, plus the head
    plan.bn["layer2"] = "train"
    configs = [compare.Config("head", "head"), compare.Config("layer2 only", "head", plan=plan.to_dict())]
    rows = compare.run("test_resnet", data.scan_folder(synthetic), configs, 1, tmp_path, img_size=64, batch_size=8)
    layer2 = sum(p.numel() for p in model.layer2.parameters())
    assert rows[1].trainable - rows[0].trainable == layer2
    assert rows[0].bn_moved == 0 and rows[1].bn_moved == sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in model.layer2.modules())


# ---- issue 22: the shared caching pass timed apart; differences within noise said so -------------------------

def _row(name, predicted, labels, passes=None, seconds=1.0, cache=None):
    k = max(labels + predicted) + 1
    cm = [[0] * k for _ in range(k)]
    for p, y in zip(predicted, labels):
        cm[y][p] += 1
    return compare.Row(compare.Config(name), [{"val_acc": sum(p == y for p, y in zip(predicted, labels)) / len(labels),
                                               "val_loss": 1.0}], seconds, 10, 0, cm, None, cache or [],
                       passes or [], predicted, labels)


LABELS = [i % 2 for i in range(20)]


def _hits(n_right):
    """Predictions on LABELS with the first n_right right and the rest wrong."""
    return [y if i < n_right else 1 - y for i, y in enumerate(LABELS)]


def test_one_image_of_twenty_is_within_noise_and_fifteen_are_not():
    rows = [_row("a", _hits(18), LABELS), _row("b", _hits(17), LABELS), _row("c", _hits(3), LABELS)]
    verdicts = {v.run: v for v in compare.noise(rows)}
    assert verdicts["a"].status == "best" and verdicts["a"].n == 20 and verdicts["a"].correct == 18
    assert verdicts["b"].status == "within noise" and verdicts["b"].diff == 1 and verdicts["b"].test == "McNemar"
    assert verdicts["b"].p == pytest.approx(1.0)
    assert verdicts["c"].status == "behind" and verdicts["c"].diff == 15 and verdicts["c"].p < 1e-3
    text = compare.noise_text(list(verdicts.values()))
    assert "b (0.850, 1 image fewer" in text and "within noise of the best, a (0.900)" in text
    assert "no winner" in text and "Behind the best beyond noise: c" in text
    table = {r["run"]: r for r in compare.table(rows)}
    assert table["a"]["vs the best"] == "best (or tied)" and "within noise" in table["b"]["vs the best"]
    assert table["b"]["± SE"] == pytest.approx((0.85 * 0.15 / 20) ** 0.5, abs=1e-4)


def test_mcnemar_counts_only_the_images_the_two_runs_disagree_on():
    assert compare.mcnemar_p(0, 0) == 1.0 and compare.mcnemar_p(1, 0) == 1.0
    assert compare.mcnemar_p(5, 0) == pytest.approx(2 / 32)  # 5 one-sided disagreements: not yet below 0.05
    assert compare.mcnemar_p(6, 0) == pytest.approx(2 / 64)
    assert compare.mcnemar_p(10, 4) == pytest.approx(0.1796, abs=1e-4)  # scipy.stats.binomtest(4, 14).pvalue
    # the same 17 vs 12 right out of 20, once with the runs agreeing where they can, once disagreeing a lot
    a = _hits(17)
    b_agrees = _hits(12)  # wrong on 8 images, 3 of them a's: 5 disagreements, all one way
    b_other = [y if i >= 8 else 1 - y for i, y in enumerate(LABELS)]  # right on 12, wrong on a's right ones
    agree = {v.run: v for v in compare.noise([_row("a", a, LABELS), _row("b", b_agrees, LABELS)])}["b"]
    other = {v.run: v for v in compare.noise([_row("a", a, LABELS), _row("b", b_other, LABELS)])}["b"]
    assert agree.diff == other.diff == 5 and agree.p == pytest.approx(2 / 32) and other.p > agree.p


def test_without_saved_predictions_the_confusion_matrices_give_a_two_proportion_test():
    rows = [_row("a", _hits(18), LABELS), _row("b", _hits(17), LABELS), _row("c", _hits(3), LABELS)]
    for r in rows:
        r.predicted = r.labels = None  # a comparison saved before predictions were kept
    verdicts = {v.run: v for v in compare.noise(rows)}
    assert verdicts["b"].test == "two-proportion" and verdicts["b"].status == "within noise"
    assert verdicts["c"].status == "behind" and verdicts["c"].diff == 15
    assert "confusion matrices" in compare.noise_text(list(verdicts.values()))


def test_a_clear_winner_is_named_as_one_and_a_tie_is_no_winner():
    rows = [_row("a", _hits(20), LABELS), _row("b", _hits(4), LABELS)]
    text = compare.noise_text(compare.noise(rows))
    assert "a (1.000) is ahead of every other configuration beyond noise" in text
    tied = [_row("a", _hits(17), LABELS), _row("b", _hits(17), LABELS), _row("c", _hits(2), LABELS)]
    verdicts = compare.noise(tied)
    assert [v.status for v in verdicts] == ["best", "best", "behind"]
    text = compare.noise_text(verdicts)
    assert "a, b (tied at 0.850) tie for the best: no winner" in text and "Behind the best beyond noise: c" in text


def test_the_shared_caching_pass_is_not_in_the_first_configurations_seconds(synthetic, tmp_path, monkeypatch):
    from vislab.training import feature_cache as caching, loop as training

    build = caching.build
    slow = 1.5

    def slow_build(*args, **kwargs):  # a caching pass that takes at least `slow` seconds when it runs
        cache, why = build(*args, **kwargs)
        if cache is not None and not cache.shared:
            time.sleep(slow)
        return cache, why

    monkeypatch.setattr(caching, "build", slow_build)
    seed = training.seed_everything

    def slow_seed(*args):  # and 1 s of a run's set-up before its first phase: not part of any caching pass
        time.sleep(1.0)
        return seed(*args)

    monkeypatch.setattr(training, "seed_everything", slow_seed)
    configs = [compare.Config("head a", "head", lr=1e-3), compare.Config("head b", "head", lr=1e-2),
               compare.Config("from scratch", "scratch")]
    rows = compare.run("test_resnet", data.scan_folder(synthetic), configs, 1, tmp_path, img_size=64, batch_size=8)
    passes = compare.caching_passes(rows)
    assert len(passes) == 1 and passes[0].used_by == ["head a", "head b"] and passes[0].built_by == "head a"
    built_line = float(re.search(r"run once by .*?, (\d+\.\d) s \(", rows[0].cache[0]).group(1))
    assert slow <= passes[0].seconds <= slow + built_line + 0.5  # the pass, not the set-up before it
    a, b, scratch = rows
    assert a.seconds >= slow  # the wall time of the first run did include the pass ...
    assert a.seconds - a.own_seconds >= slow  # ... its own time does not
    assert a.own_seconds == pytest.approx(a.seconds - passes[0].seconds)
    assert b.own_seconds == pytest.approx(b.seconds) and scratch.passes == []
    table = {r["run"]: r for r in compare.table(rows)}
    assert table["head a"]["caching pass"] == table["head b"]["caching pass"] == "#1"
    assert table["from scratch"]["caching pass"] == "none"
    assert table["head a"]["train seconds"] == pytest.approx(a.own_seconds, abs=0.01)
    text = compare.markdown(rows)
    assert f"shared caching pass #1: {passes[0].seconds:.1f} s, used by head a, head b" in text
    # saved and loaded back, with the predictions that the noise test pairs
    _, _, loaded = compare.load(tmp_path, models=False)
    assert [r.passes for r in loaded] == [r.passes for r in rows] and loaded[0].model is None
    assert loaded[0].predicted == rows[0].predicted and len(loaded[0].labels) == sum(map(sum, rows[0].confusion))
    assert compare.noise(loaded)[0].test == "McNemar"
    with open(tmp_path / "comparison.csv") as f:
        saved = {r["run"]: r for r in csv.DictReader(f)}
    assert saved["head b"]["caching pass"] == "#1" and saved["head a"]["vs the best"]
    # a comparison saved before passes were recorded: read back from the runs' cache lines
    raw = json.loads((tmp_path / "comparison.json").read_text())
    for r in raw["rows"]:
        del r["passes"], r["predicted"], r["labels"]
    (tmp_path / "comparison.json").write_text(json.dumps(raw))
    _, _, old = compare.load(tmp_path, models=False)
    assert [[(p["id"], p["built"]) for p in r.passes] for r in old] == [[(1, True)], [(1, False)], []]
    assert f", {old[0].passes[0]['seconds']:.1f} s (choosing" in rows[0].cache[0]  # the pass's own line says it
    assert compare.noise(old)[1].test == "two-proportion"


def test_cache_lines_of_two_prefixes_give_two_passes():
    built = ("features cached: prefix ({n} modules up to '{m}') run once by onnxruntime (CPU, 2 threads), {s} s "
             "(choosing the engine on the first batch cost 0.2 s; decoding 1.0 s in line, the prefix 2.0 s), "
             "3 MiB in memory; training runs from 'fc'")
    shared = "features cached: prefix ({n} modules up to '{m}') shared with an earlier run, 3 MiB in memory; " \
             "training runs from 'fc'"
    rows = [_row("head", [0], [0], cache=[built.format(n=9, m="layer4", s="4.2")], seconds=6.9),
            _row("partial", [0], [0], cache=[built.format(n=7, m="layer3", s="1.5")], seconds=3.7),
            _row("head lr", [0], [0], cache=[shared.format(n=9, m="layer4")], seconds=2.5),
            _row("full", [0], [0], cache=["no feature cache: nothing frozen before the first trainable layer"])]
    compare.passes_from_cache_lines(rows)
    found = compare.caching_passes(rows)
    assert [(p.id, p.seconds, p.used_by) for p in found] == [(1, 4.2, ["head", "head lr"]), (2, 1.5, ["partial"])]
    assert [round(r.own_seconds, 2) for r in rows] == [2.7, 2.2, 2.5, 1.0]
