"""The comparison runner: one table, matching the individual runs' own metrics files."""

import csv
import json

import pytest
import torch

from vislab import cli, compare, data


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
    from vislab import freezing, models

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
