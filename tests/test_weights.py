"""Real weights offline: the seeded files are the real ones; user files are checked, never executed."""

import os
import pickle

import pytest
import torch
from PIL import Image

from vislab import cli, _fileio as fileio
from vislab.models import factory as models, weights
from vislab.data.transforms import eval_transform



def _top1(model, cfg, array):
    x = eval_transform(cfg)(Image.fromarray(array)).unsqueeze(0)  # (1, 3, H, W)
    model.eval()
    with torch.no_grad():
        return model(x).softmax(1)[0].topk(3)


def test_offline_mobilenet_v2_is_torchvisions_real_file():
    status = weights.status("mobilenet_v2", "torchvision")
    assert status.available, "MobileNetV2 weights missing: run bash scripts/setup.sh (it seeds them)"
    assert status.path.name == "mobilenet_v2-b0353104.pth"
    assert fileio.digest(status.path).startswith("b0353104")  # torchvision names files by hash prefix


def test_mobilenet_v2_default_model_recognises_a_cat():
    import skimage.data

    model, info = models.create_model("mobilenet_v2", num_classes=None, weights_choice="pretrained")
    assert info.pretrained and info.num_classes == 1000
    assert info.data_config.crop_pct == pytest.approx(224 / 256)  # V1 weights' own transforms
    probs, idx = _top1(model, info.data_config, skimage.data.chelsea())
    assert int(idx[0]) in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
    probs, idx = _top1(model, info.data_config, skimage.data.coffee())
    assert int(idx[0]) == 967  # espresso


def test_seeded_efficientnet_lite0_through_timm():
    import skimage.data

    model, info = models.create_model("tf_efficientnet_lite0", num_classes=None, weights_choice="pretrained")
    assert info.weights.source == "seeded" and info.data_config.mean == (0.5, 0.5, 0.5)
    _, idx = _top1(model, info.data_config, skimage.data.coffee())
    assert int(idx[0]) == 967


def test_seeded_se_network_keeps_its_three_class_head_then_swaps():
    model, info = models.create_model("mobilenet_v3_small", num_classes=None, weights_choice="pretrained")
    assert info.num_classes == 3 and "3-class" in info.weights.note
    model5, info5 = models.create_model("mobilenet_v3_small", num_classes=5, weights_choice="pretrained")
    assert info5.num_classes == 5
    se = [n for n, m in model.named_modules() if type(m).__name__ == "SqueezeExcitation"]
    assert len(se) == 9
    key = f"{se[0]}.fc1.weight"  # an SE block's squeeze layer: the real weights survive the head swap
    assert torch.equal(model.state_dict()[key], model5.state_dict()[key])


def test_no_weights_is_said_plainly():
    with pytest.raises(weights.WeightsError, match="no pretrained weights for resnet18"):
        models.create_model("resnet18", 2, weights_choice="pretrained")
    _, info = models.create_model("resnet18", 2, weights_choice="auto")
    assert not info.pretrained and "random init" in info.notes[0]


def test_import_safetensors_then_create_uses_it(tmp_path, capsys):
    from safetensors.torch import save_file

    src, _ = models.create_model("test_resnet", num_classes=None, weights_choice="random")
    file = tmp_path / "mine.safetensors"
    save_file(src.state_dict(), str(file))
    assert cli.main(["weights", "import", str(file), "--model", "test_resnet"]) == 0
    model, info = models.create_model("test_resnet", num_classes=None, weights_choice="pretrained")
    assert info.weights.source == "imported"
    for k, v in src.state_dict().items():
        assert torch.equal(v, model.state_dict()[k])


def test_import_a_fine_tuned_pth_with_other_classes(tmp_path):
    src, _ = models.create_model("test_resnet", num_classes=4, weights_choice="random")
    file = tmp_path / "ft.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, file)
    weights.import_file(file, "test_resnet")
    model, info = models.create_model("test_resnet", num_classes=None, weights_choice="pretrained")
    assert info.num_classes == 4 and torch.equal(model.fc.weight, src.fc.weight)


def test_mismatched_file_names_the_first_bad_tensor(tmp_path, capsys):
    other, _ = models.create_model("test_efficientnet", num_classes=None, weights_choice="random")
    file = tmp_path / "wrong.pth"
    torch.save(other.state_dict(), file)
    assert cli.main(["weights", "import", str(file), "--model", "test_resnet"]) == 2
    err = capsys.readouterr().err
    assert "does not fit" in err and "first '" in err and "Traceback" not in err
    shaped = {k: v for k, v in models.build_architecture("test_resnet").state_dict().items()}
    shaped["conv1.0.weight"] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(weights.WeightsError, match="conv1.0.weight"):
        check = models.build_architecture("test_resnet")
        weights.check_fits(check, shaped)


class _Evil:
    def __reduce__(self):
        return (print, ("this would run code",))


def test_pickle_with_code_is_refused(tmp_path):
    file = tmp_path / "evil.pth"
    with open(file, "wb") as f:
        pickle.dump({"weight": _Evil()}, f)
    with pytest.raises(weights.WeightsError, match="refused"):
        weights.read_state_dict(file)


def test_garbage_file_is_a_clear_error(tmp_path):
    file = tmp_path / "junk.safetensors"
    file.write_bytes(b"not really")
    with pytest.raises(weights.WeightsError, match="not a readable safetensors"):
        weights.read_state_dict(file)


def test_a_file_for_another_catalog_architecture_is_named(tmp_path):
    with torch.device("meta"):
        resnet = models.build_architecture("resnet18")
    state = {k: torch.zeros(v.shape) for k, v in resnet.state_dict().items()}
    file = tmp_path / "resnet18_weights.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(file))
    with pytest.raises(weights.WeightsError, match="looks like resnet18's weights"):
        weights.import_file(file, "mobilenet_v2")


def test_gguf_tensors_read_back_what_the_gguf_writer_wrote(tmp_path):
    """The seeder's GGUF reader against the gguf package's own writer: metadata values, torch-order shapes
    (GGUF stores dims reversed), F16 and F32 values, and a clear refusal of other tensor types and files."""
    import gguf
    import numpy as np

    from vislab.models.gguf import read_gguf

    conv = np.arange(2 * 3 * 4 * 5, dtype=np.float16).reshape(2, 3, 4, 5) / 8  # (out, in, kh, kw)
    bias = np.array([0.5, -1.25], dtype=np.float32)
    path = tmp_path / "toy.gguf"
    writer = gguf.GGUFWriter(path, "mobilenet")
    writer.add_uint32("mobilenet.num_classes", 2)
    writer.add_string("mobilenet.class_0", "food")
    writer.add_float32("mobilenet.mean_r", 0.485)
    writer.add_tensor("features.0.0.weight", conv)
    writer.add_tensor("features.0.0.bias", bias)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    meta, tensors = read_gguf(path)
    assert meta["mobilenet.num_classes"] == 2 and meta["mobilenet.class_0"] == "food"
    assert meta["mobilenet.mean_r"] == pytest.approx(0.485)
    assert tensors["features.0.0.weight"].shape == (2, 3, 4, 5) and tensors["features.0.0.weight"].dtype == np.float16
    assert np.array_equal(tensors["features.0.0.weight"], conv) and np.array_equal(tensors["features.0.0.bias"], bias)

    quantized = tmp_path / "int8.gguf"
    writer = gguf.GGUFWriter(quantized, "mobilenet")
    writer.add_tensor("w", np.ones((4, 4), dtype=np.int8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="unsupported ggml type I8"):
        read_gguf(quantized)
    (tmp_path / "not.gguf").write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        read_gguf(tmp_path / "not.gguf")



# -- weights are the machine's, not one lab home's (issue 22) ----------------------------------------------

def _machine(tmp_path, monkeypatch, *, default=True, env=False):
    """An empty lab home for this 'server', empty torch / Hugging Face caches, and a machine weights folder:
    the checkout's `.vislab` (what a plain `bash scripts/setup.sh` seeds) or `VISLAB_WEIGHTS`."""
    import huggingface_hub.constants

    from vislab import _paths as paths

    lab_home, machine, checkout = tmp_path / "srv_class", tmp_path / "machine", tmp_path / "checkout_vislab"
    monkeypatch.setenv("VISLAB_HOME", str(lab_home))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no user torch hub cache in the way
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(paths, "default_home", lambda: checkout, raising=False)
    if env:
        monkeypatch.setenv("VISLAB_WEIGHTS", str(machine))
    else:
        monkeypatch.delenv("VISLAB_WEIGHTS", raising=False)
    return lab_home, (machine if env else checkout)


def _seed_fake(folder, model, state, record=None):
    """What `vislab weights seed` leaves in a weights folder, with small stand-in tensors."""
    import json

    from safetensors.torch import save_file

    if model == "mobilenet_v2":  # torchvision's own file name, in hub/checkpoints
        file = folder / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, file)
    else:
        file = folder / "weights" / f"{model}.safetensors"
        file.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(file))
    manifest_path = folder / "weights" / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest[model] = {"model": model, "source": "torchvision" if model == "mobilenet_v2" else "timm",
                       "file": str(file), "ok": True, "status": "ok", "error": None, **(record or {})}
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest))
    return file


@pytest.mark.parametrize("where", ["checkout", "VISLAB_WEIGHTS"])
def test_a_server_on_another_lab_home_loads_the_machines_seeded_weights(tmp_path, monkeypatch, where):
    """Set-up seeded the checkout's .vislab (or VISLAB_WEIGHTS); a server on VISLAB_HOME=/srv/class loads them
    through the real paths: torchvision's hub loader for mobilenet_v2, timm's pretrained=True with the record's
    own head and data config for a seeded safetensors file."""
    from vislab.training import evaluation

    lab_home, machine = _machine(tmp_path, monkeypatch, env=where == "VISLAB_WEIGHTS")
    tv, _ = models.create_model("mobilenet_v2", num_classes=None, weights_choice="random")
    tv_file = _seed_fake(machine, "mobilenet_v2", tv.state_dict())
    tm, _ = models.create_model("test_resnet", num_classes=4, weights_choice="random")
    tm_file = _seed_fake(machine, "test_resnet", tm.state_dict(),
                         {"num_classes": 4, "class_names": ["a", "b", "c", "d"], "data_config": {"crop_pct": 1.0}})

    status = weights.status("mobilenet_v2", "torchvision")
    assert (status.source, status.path) == ("seeded", tv_file)
    model, info = models.create_model("mobilenet_v2", num_classes=None, weights_choice="pretrained")
    assert info.pretrained and torch.equal(model.features[0][0].weight, tv.features[0][0].weight)

    model, info = models.create_model("test_resnet", num_classes=None, weights_choice="pretrained")
    assert (info.weights.source, info.weights.path, info.num_classes) == ("seeded", tm_file, 4)
    assert info.data_config.crop_pct == 1.0 and torch.equal(model.fc.weight, tm.fc.weight)
    assert evaluation.class_names("test_resnet", 4) == ["a", "b", "c", "d"]
    assert weights.missing_advice("mobilenet_v2") == ""
    assert not lab_home.exists()  # found in place: nothing was copied into the lab home


def test_lookup_order_lab_home_then_vislab_weights_then_checkout(tmp_path, monkeypatch):
    from vislab import _paths as paths

    lab_home, machine = _machine(tmp_path, monkeypatch, env=True)
    checkout = paths.default_home()
    assert paths.weights_homes() == [lab_home, machine, checkout]
    state = models.build_architecture("test_resnet").state_dict()
    in_checkout = _seed_fake(checkout, "test_resnet", state)
    assert weights.status("test_resnet", "timm").path == in_checkout
    in_machine = _seed_fake(machine, "test_resnet", state)
    assert weights.status("test_resnet", "timm").path == in_machine
    in_lab = _seed_fake(lab_home, "test_resnet", state)
    assert weights.status("test_resnet", "timm").path == in_lab
    in_lab.unlink()  # a record whose file is gone is passed over
    assert weights.status("test_resnet", "timm").path == in_machine


def test_an_import_stays_in_the_lab_home_and_wins_over_the_machines(tmp_path, monkeypatch):
    import json

    lab_home, machine = _machine(tmp_path, monkeypatch)
    seeded = _seed_fake(machine, "test_resnet", models.build_architecture("test_resnet").state_dict())
    before = (machine / "weights" / "manifest.json").read_text()
    src, _ = models.create_model("test_resnet", num_classes=5, weights_choice="random")
    file = tmp_path / "mine.pth"
    torch.save(src.state_dict(), file)
    imported = weights.import_file(file, "test_resnet")
    assert imported.source == "imported" and imported.path.parent == lab_home / "weights"
    own = json.loads((lab_home / "weights" / "manifest.json").read_text())
    assert set(own) == {"test_resnet"} and own["test_resnet"]["source"] == "imported"
    assert (machine / "weights" / "manifest.json").read_text() == before and seeded.is_file()
    model, info = models.create_model("test_resnet", num_classes=None, weights_choice="pretrained")
    assert info.num_classes == 5 and torch.equal(model.fc.weight, src.fc.weight)


@pytest.mark.parametrize("where", ["checkout", "VISLAB_WEIGHTS"])
def test_missing_advice_gives_the_command_that_makes_them_appear_for_this_server(tmp_path, monkeypatch, where):
    """With nothing seeded anywhere, the advice's command, run from a shell with another VISLAB_HOME (as the
    lab home's admin may have), seeds where this server looks: afterwards the server finds the weights."""
    import shlex
    import sys

    from vislab.models import seeding

    lab_home, machine = _machine(tmp_path, monkeypatch, env=where == "VISLAB_WEIGHTS")
    assert not weights.status("mobilenet_v2", "torchvision").available
    advice = weights.missing_advice("mobilenet_v2")
    command = weights.fix_command("mobilenet_v2")
    assert f"`{command}`" in advice and "bash scripts/setup.sh" in advice
    words = shlex.split(command)
    env = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
    assert env == {"VISLAB_WEIGHTS": str(machine)}
    assert words[len(env):] == [sys.executable, "-m", "vislab", "weights", "seed"]

    def fake_seeder(dest, downloads, log):  # no download: place a stand-in file where the seeder would
        fileio.write_bytes(dest, b"stand-in")
        return {}

    server_env = {k: os.environ.get(k) for k in ("VISLAB_HOME", "VISLAB_WEIGHTS")}
    monkeypatch.setattr(seeding, "SEEDERS", [(*s[:4], fake_seeder, s[5]) for s in seeding.SEEDERS])
    monkeypatch.setenv("VISLAB_HOME", str(tmp_path / "the_admins_shell_home"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert cli.main(words[len(env) + 3:]) == 0  # `vislab weights seed` under the command's environment
    for k, v in server_env.items():  # back to the server's own environment
        if v is None:
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, v)
    status = weights.status("mobilenet_v2", "torchvision")
    assert status.available and status.path.is_relative_to(machine)
    assert weights.missing_advice("mobilenet_v2") == ""


def test_missing_advice_for_a_model_no_registry_seeds(tmp_path, monkeypatch):
    import shlex

    lab_home, _ = _machine(tmp_path, monkeypatch)
    advice = weights.missing_advice("resnet18")
    assert f"`{weights.import_command('resnet18')}`" in advice and f"`{weights.fix_command('resnet18')}`" in advice
    assert shlex.split(weights.import_command("resnet18"))[0] == f"VISLAB_HOME={lab_home}"
    assert shlex.split(weights.fix_command("resnet18"))[-3:] == ["weights", "pull", "resnet18"]
    assert shlex.split(weights.fix_command("resnet18"))[0] == f"TORCH_HOME={tmp_path / 'torch_home'}"


def test_missing_advice_says_why_the_last_seeding_did_not_place_it(tmp_path, monkeypatch):
    import json

    _, machine = _machine(tmp_path, monkeypatch)
    (machine / "weights").mkdir(parents=True)
    (machine / "weights" / "manifest.json").write_text(json.dumps({"mobilenet_v3_small": {
        "model": "mobilenet_v3_small", "file": str(machine / "weights" / "x.safetensors"), "ok": False,
        "status": "skipped", "error": "skipped: npm not found"}}))
    advice = weights.missing_advice("mobilenet_v3_small")
    assert "npm not found" in advice and weights.fix_command("mobilenet_v3_small") in advice
