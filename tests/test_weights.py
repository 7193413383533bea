"""Real weights offline: the seeded files are the real ones; user files are checked, never executed."""

import pickle

import pytest
import torch
from PIL import Image

from vislab import cli, fileio, models, weights
from vislab.transforms import eval_transform



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

    from vislab.gguf_tensors import read_gguf

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

