import numpy as np
import pytest
import timm
import torch

from vislab.models import factory as models
from vislab.views import se
from vislab.views.base import ViewNotApplicable
from vislab.models.weights import WeightsError

# model -> SE block type it exercises
SE_MODELS = {
    "mobilenet_v3_small": "SqueezeExcitation",  # torchvision, Hardsigmoid gate (`scale_activation`)
    "test_efficientnet": "SqueezeExcite",  # timm EfficientNet blocks, Sigmoid gate
    "ese_vovnet19b_slim_dw": "EffectiveSEModule",  # timm, one 1x1 conv, hard sigmoid gate
    "test_byobnet": "SEModule",  # timm.layers SEModule (as in SE-ResNet, RegNet), Sigmoid gate
}


def _model(name):
    if name in ("mobilenet_v3_small", "test_efficientnet"):
        return models.create_model(name, 3, weights_choice="random")[0]
    return timm.create_model(name, num_classes=3)


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("name", list(SE_MODELS))
def test_gates_in_unit_range_and_output_is_input_times_gate(name):
    torch.manual_seed(0)
    model = _model(name)
    blocks = se.find_se_blocks(model)
    assert blocks and {type(model.get_submodule(b)).__name__ for b in blocks} == {SE_MODELS[name]}
    x = torch.randn(2, 3, 64, 64)
    gates = se.se_gates(model, x)
    assert gates.blocks == blocks
    for b, g in zip(gates.blocks, gates.gates):
        assert g.shape[0] == 2 and g.min() >= 0.0 and g.max() <= 1.0, b
        x_in, gate, out = se.block_input_output(model, b, x)
        assert gate.shape == (2, x_in.shape[1])
        assert torch.allclose(out, x_in * gate[:, :, None, None], atol=1e-6), b  # broadcast over H, W
        np.testing.assert_allclose(gate.numpy(), g, atol=1e-6)  # same forward, same gate
    assert _no_hooks(model)
    heat = gates.matrix(0)
    widths = [g.shape[1] for g in gates.gates]
    assert heat.shape == (len(blocks), max(widths))
    assert np.isnan(heat).sum() == sum(max(widths) - w for w in widths)


def test_gate_found_by_structure_for_unknown_block_types():
    seres = timm.create_model("legacy_seresnet18")  # senet.SEModule keeps its gate in `sigmoid`
    assert len(se.find_se_blocks(seres)) == 8
    assert isinstance(se.gate_module(seres.get_submodule(se.find_se_blocks(seres)[0])), torch.nn.Sigmoid)

    class ChannelGate(torch.nn.Module):  # a home-made SE block, unknown by name
        def __init__(self, c):
            super().__init__()
            self.reduce, self.expand = torch.nn.Conv2d(c, 4, 1), torch.nn.Conv2d(4, c, 1)
            self.gate = torch.nn.Hardsigmoid()

        def forward(self, x):
            return x * self.gate(self.expand(self.reduce(x.mean((2, 3), keepdim=True)).relu()))

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), ChannelGate(8), torch.nn.Conv2d(8, 8, 3))
    assert se.find_se_blocks(net) == ["1"]
    g = se.se_gates(net, torch.randn(1, 3, 16, 16)).gates[0]
    assert g.shape == (1, 8)


def test_training_flag_restored_and_hooks_removed_on_error():
    model = _model("test_efficientnet")
    model.train()
    se.se_gates(model, torch.randn(1, 3, 64, 64))
    assert model.training and all(m.training for m in model.modules())
    with pytest.raises(RuntimeError):
        se.se_gates(model, torch.randn(1, 5, 64, 64))  # wrong channel count fails inside the forward
    assert _no_hooks(model) and model.training


def test_model_without_se_is_not_applicable():
    model, _ = models.create_model("test_resnet", 3, weights_choice="random")
    assert se.find_se_blocks(model) == []
    with pytest.raises(ViewNotApplicable, match="mobilenet_v3_small"):
        se.se_gates(model, torch.randn(1, 3, 64, 64))


def test_top_channels():
    gate = np.array([0.5, 0.9, 0.1, 0.7, 0.0])
    assert se.top_channels(gate, 2) == ([1, 3], [4, 2])


def test_class_mean_gates_match_per_class_means():
    torch.manual_seed(0)
    model = _model("test_efficientnet")
    x, y = torch.randn(6, 3, 64, 64), torch.tensor([0, 2, 0, 2, 2, 0])
    means = se.class_mean_gates(model, [(x[:4], y[:4]), (x[4:], y[4:])], num_classes=4)
    full = se.se_gates(model, x)
    assert means.blocks == full.blocks
    for g_mean, g_all in zip(means.gates, full.gates):
        assert g_mean.shape == (4, g_all.shape[1])
        np.testing.assert_allclose(g_mean[0], g_all[[0, 2, 5]].mean(0), atol=1e-6)
        np.testing.assert_allclose(g_mean[2], g_all[[1, 3, 4]].mean(0), atol=1e-6)
        assert np.isnan(g_mean[1]).all() and np.isnan(g_mean[3]).all()  # classes never seen


def test_real_trained_gates_differ_between_images():
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    from vislab.data.transforms import eval_transform

    try:
        model, info = models.create_model("mobilenet_v3_small", None, weights_choice="pretrained")
    except WeightsError as exc:
        pytest.skip(f"seeded mobilenet_v3_small weights missing: {exc}")
    t = eval_transform(info.data_config.with_size(160))
    x = torch.stack([t(Image.fromarray(skimage_data.chelsea())), t(Image.fromarray(skimage_data.coffee()))])
    gates = se.se_gates(model, x)
    assert len(gates.blocks) == 9
    diffs = [np.abs(g[0] - g[1]).max() for g in gates.gates]
    assert max(diffs) > 0.1, diffs  # trained gates react to the image content
    assert all(((g >= 0) & (g <= 1)).all() for g in gates.gates)


def test_mean_difference_ignores_the_padding_of_narrow_blocks():
    gates = se.SEGates(["a", "b"], [np.array([[0.2, 0.8], [0.4, 0.8]]), np.array([[0.1, 0.5, 0.9], [0.1, 0.5, 0.9]])])
    np.testing.assert_allclose(gates.mean_difference(0, 1), [0.1, 0.0])  # (|0.2-0.4| + 0) / 2; identical rows
