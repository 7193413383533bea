"""Issue 22: a `vislab train`'s fixed cost. The command's own process neither walks its import-time objects with
the cyclic collector while they load nor at exit (the exit passes were ~0.5 s of every run)."""

import json
import subprocess
import sys

from vislab import cli


# `vislab train` as its own process (main() reading sys.argv, as the `vislab` script and `python -m vislab` do)
TRAIN_PROBE = r"""
import atexit, gc, json, sys, time
from vislab import cli
atexit.register(lambda: print("EXIT_FROZEN", gc.get_freeze_count(), flush=True))  # runs after cli's handler
walked = []
gc.callbacks.append(lambda phase, info: phase == "start" and info["generation"] == 2
                    and walked.append(len(gc.get_objects())))
sys.argv = ["vislab"] + sys.argv[1:]
rc = cli.main()
print("RESULT", json.dumps({"rc": rc, "walked": walked, "frozen": gc.get_freeze_count(),
                            "gc_enabled": gc.isenabled(), "torchvision": "torchvision" in sys.modules}), flush=True)
"""


def test_train_of_a_torchvision_model_in_its_own_process(synthetic, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--data", str(synthetic), "--model", "mobilenet_v2", "--weights", "auto", "--epochs", "1",
            "--img-size", "64", "--batch-size", "8", "--device", "cpu", "--engine", "torch", "--out", str(out)]
    done = subprocess.run([sys.executable, "-c", TRAIN_PROBE, *argv], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    result = json.loads(next(line for line in lines if line.startswith("RESULT ")).split(" ", 1)[1])
    assert result["rc"] == 0 and result["torchvision"] and result["gc_enabled"]
    # torch, torchvision and the torch._dynamo + sympy they pull in (~350,000 objects) were frozen once loaded:
    # the full passes that walked them during the imports (6, up to 340,000 objects each) are gone
    assert result["frozen"] > 100_000
    assert all(n < 100_000 for n in result["walked"]), result["walked"]
    # at exit, cli's handler collected once and froze what was left: the teardown passes walk nothing big
    exit_frozen = int(next(line for line in lines if line.startswith("EXIT_FROZEN")).split()[1])
    assert exit_frozen > result["frozen"]
    # ... and the run is complete, its output too
    assert "run saved to" in lines[lines.index(next(line for line in lines if line.startswith("RESULT "))) - 1]
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "metrics.json", "classes.json"}
    assert json.loads((out / "config.json").read_text())["source"] == "torchvision"


def test_main_called_in_process_leaves_the_callers_collector_alone(tmp_path, capsys):
    import gc

    frozen = gc.get_freeze_count()
    rc = cli.main(["train", "--data", str(tmp_path / "none"), "--epochs", "1", "--out", str(tmp_path / "run")])
    assert rc == cli.EXIT_BAD_INPUT  # failed after cmd_train's imports
    assert gc.isenabled() and gc.get_freeze_count() == frozen


def test_the_front_door_loads_the_library_only_when_used():
    """`import vislab` (which the `vislab` command does first) loads no torch; its three names load on use."""
    probe = ("import sys, vislab; before = 'torch' in sys.modules\n"
             "spec = vislab.Spec(model='test_resnet', weights='random', img_size=64)\n"
             "model, info, phases = vislab.prepare(spec, 3)\n"
             "m, i = vislab.create_model('test_resnet', 3, weights_choice='random')\n"
             "print(before, sorted(vislab.__all__), info.num_classes, i.num_classes, phases[0].name)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "['Spec',", "'create_model',", "'prepare']", "3", "3", "head"]
