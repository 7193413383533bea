"""The benchmark suite runs (tiny configuration) so it never rots. No speed assertions here."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.mark.slow
def test_bench_suite_runs_in_a_tiny_configuration(tmp_path):
    import run as bench

    assert bench.main(["--tiny", "--skip-app", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    cases = [r["case"] for r in results]
    assert cases == ["a: head only", "b: last stage thawed", "c: Grad-CAM"]
    head = results[0]
    assert head["cache"][0].startswith("features cached")  # vislab's side really used the cache
    assert head["naive_s"] > 0 and head["inference_s"] > 0
    assert "| a: head only" in (tmp_path / "results.md").read_text()


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
    assert out.count(" same ") == 2 and "features cached" in out
