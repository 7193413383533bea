import numpy as np
import pytest
import torch
import torch.nn as nn

from vislab._hooks import forward_with_hooks
from vislab.views import features
from vislab.models import freezing, factory as models
from vislab.views.base import ViewNotApplicable


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("k", [3, 7, 11])
def test_filter_grid_shape_and_range(k):
    conv = nn.Conv2d(3, 10, k)  # 10 filters: a 4x3 grid with two empty cells
    grid = features.filter_grid(conv, pad=2, scale=3)
    tile = k * 3
    assert grid.shape == (3 * (tile + 2) + 2, 4 * (tile + 2) + 2, 3)
    assert grid.dtype == np.uint8
    first = grid[2:2 + tile, 2:2 + tile].astype(float) / 255  # filter 0, upscaled by 3
    w = conv.weight.detach()[0].permute(1, 2, 0).numpy()  # (k, k, 3)
    expected = (w - w.min()) / (w.max() - w.min())
    assert np.abs(first[::3, ::3] - expected).max() <= 0.5 / 255 + 1e-6  # each filter min-max normalised
    assert first.min() == 0.0 and first.max() == 1.0
    assert (grid[:2] == 255).all() and (grid[:, :2] == 255).all()  # padding
    assert (grid[-tile - 2:, -2 * (tile + 2):] == 255).all()  # the two empty cells at the end of the last row
    assert (grid[-tile - 2:, :tile + 2] != 255).any()  # filter 8 starts the last row


def test_first_conv_and_conv_layers():
    model, _ = models.create_model("test_resnet", 3, weights_choice="random")
    name, conv = features.first_conv(model)
    assert conv.in_channels == 3 and name == "conv1.0"
    assert features.filter_grid(conv).shape[-1] == 3
    names = features.conv_layers(model)
    assert names[0] == "conv1.0" and "layer4.0.conv2" in names and "fc" not in names
    se_model, _ = models.create_model("test_efficientnet", 3, weights_choice="random")
    assert not [n for n in features.conv_layers(se_model) if ".se." in n]  # 1x1 maps of SE blocks left out
    with pytest.raises(ViewNotApplicable, match="resnet18"):
        features.first_conv(nn.Sequential(nn.Conv2d(1, 4, 3)))


def test_activations_shape_hooks_and_mode():
    model, _ = models.create_model("test_resnet", 3, weights_choice="random")
    model.train()
    x = torch.randn(2, 3, 64, 64)
    acts = features.activations(model, "layer2", x)
    assert acts.shape == (2, model.layer2[-1].conv2.out_channels, 8, 8)
    assert _no_hooks(model) and model.training and model.layer2.training  # flags restored
    model.eval()
    with torch.no_grad():  # independent reference: run the stem and stages by hand
        ref = model.layer2(model.layer1(model.maxpool(model.act1(model.bn1(model.conv1(x))))))
    assert torch.allclose(acts, ref, atol=1e-6)
    with pytest.raises(ViewNotApplicable):
        features.activations(model, "fc", x)  # (B, classes) is not a feature map
    assert _no_hooks(model)


def test_top_channels_and_map_change():
    acts = torch.zeros(5, 4, 4)
    acts[3] += 2.0
    acts[1] += 1.0
    acts[4, 0, 0] = 8.0  # mean 0.5
    assert features.top_channels(acts, 3) == [3, 1, 4]
    before = torch.ones(2, 3, 4, 4)
    assert features.map_change(before, before.clone()) == 0.0
    assert features.map_change(before, before * 1.5) == pytest.approx(0.5)


def test_frozen_layer_maps_stay_and_thawed_layer_maps_move():
    torch.manual_seed(0)
    model, _ = models.create_model("test_resnet", 3, weights_choice="random")
    plan = freezing.preset(model, "partial", thaw_last=1)[0]  # only layer4 and the head train
    assert plan.trainable["layer4"] and not plan.trainable["layer1"]
    freezing.apply(model, plan)
    x = torch.randn(4, 3, 64, 64)
    frozen_layer, thawed_layer = "layer1.0.conv2", "layer4.0.conv2"
    before = {n: features.activations(model, n, x) for n in (frozen_layer, thawed_layer)}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(torch.randn(8, 3, 64, 64)), torch.randint(0, 3, (8,)))
        loss.backward()
        opt.step()
    assert features.map_change(before[frozen_layer], features.activations(model, frozen_layer, x)) == 0.0
    assert features.map_change(before[thawed_layer], features.activations(model, thawed_layer, x)) > 1e-3


def test_hooks_go_and_flags_come_back_even_when_the_forward_fails():
    """_hooks.forward_with_hooks: a hook that raises mid-forward leaves no hook (forward or pre) on any module,
    every module's own train flag back and gradients on; a good call returns the model's eval output."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.9)).train()
    model[1].eval()  # set to eval on its own: it stays in eval
    x = torch.randn(2, 3, 8, 8)

    def boom(*args):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        forward_with_hooks(model, [(model[0], lambda m, a, out: None), (model[2], boom)], x,
                           pre=[(model[1], lambda m, a: None)])
    assert _no_hooks(model) and model.training and model[0].training and not model[1].training
    assert torch.is_grad_enabled()
    out = forward_with_hooks(model, [], x)  # (2, 4, 6, 6)
    assert torch.equal(out, forward_with_hooks(model, [], x)) and not out.requires_grad  # dropout off: eval
