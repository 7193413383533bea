"""The benchmark suite runs (tiny configuration) so it never rots. No speed assertions here."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.mark.slow
def test_bench_suite_runs_in_a_tiny_configuration(tmp_path):
    import run as bench

    from vislab.training import engines

    lab_exports = engines.exports_dir
    assert bench.main(["--tiny", "--skip-app", "--out", str(tmp_path)]) == 0
    # the suite exported into folders of its own, and gave the lab its own folder back (untouched)
    assert engines.exports_dir is lab_exports and not lab_exports().exists()
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    cases = [r["case"] for r in results]
    assert cases == ["a: head only", "b: last stage thawed", "e: head only, prefix engines",
                     "f: catalog convnets, auto vs torch engine", "c: Grad-CAM"]
    engines = results[2]
    assert [r["engine"] for r in engines["runs"]] == ["torch", "onnxruntime, fresh export", "auto, export reused",
                                                     "auto, first run after set-up"]
    assert "run once by onnxruntime" in engines["runs"][1]["cache"] and engines["decode_ms_per_image"] > 0
    assert results[3]["models"][0]["model"] == "test_resnet"
    head = results[0]
    assert head["cache"][0].startswith("features cached")  # vislab's side really used the cache
    assert head["naive_s"] > 0 and head["inference_s"] > 0
    md = (tmp_path / "results.md").read_text()
    assert "| a: head only" in md and "| e: head only, prefix in onnxruntime" in md and "| f: test_resnet" in md


def test_gpu_check_says_so_without_a_gpu(capsys):
    import torch

    import gpu_check

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the device check runs for real on it")
    assert gpu_check.main([]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out


def test_cache_equivalence_script_runs_and_agrees(capsys):
    import cache_equivalence

    assert cache_equivalence.main(["test_resnet"]) == 0
    out = capsys.readouterr().out
    assert out.count(" same ") == 4 and "features cached" in out  # head and partial, through each engine
    assert out.count("run once by onnxruntime") == 2 and out.count("run once by torch") == 2


def test_cache_equivalence_help_is_help_not_a_model_name(capsys):
    import cache_equivalence

    with pytest.raises(SystemExit) as done:
        cache_equivalence.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--engines" in out and "ERROR" not in out
