"""Receptive fields from the architecture against the hand-computed answer and against the gradient."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vislab.views import receptive


def tiny_net() -> nn.Sequential:
    # conv3 p1 -> maxpool2 -> conv5 s2 p2 -> conv3 dilation 2 p2; by hand (size r, jump j, start s):
    #   input (1, 1, 0); conv3: (3, 1, 0); pool2: (4, 2, 0.5); conv5 s2: (12, 4, 0.5); dilated conv3 (k'=5): (28, 4, 0.5)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 4, 5, stride=2, padding=2), nn.ReLU(), nn.Conv2d(4, 4, 3, dilation=2, padding=2))


HAND = {"0": (3, 1, 0.0, 32), "2": (4, 2, 0.5, 16), "3": (12, 4, 0.5, 8), "5": (28, 4, 0.5, 8)}


def test_tiny_net_matches_the_hand_computation():
    fields = receptive.receptive_fields(tiny_net(), list(HAND), (3, 32, 32))
    for name, (size, jump, start, grid) in HAND.items():
        f = fields[name]
        assert (f.size, f.jump, f.start, f.grid) == ((size, size), (jump, jump), (start, start), (grid, grid)), name


class Branches(nn.Module):
    """Two branches that meet in a residual add (3x3 and 7x7), then an F.pad + unpadded conv (timm's 'same')."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 7, padding=3)
        self.c = nn.Conv2d(4, 4, 3, stride=2)

    def forward(self, x):
        y = self.a(x) + torch.relu(self.b(x))  # a functional residual: no module sees the sum
        return self.c(F.pad(y, (1, 1, 1, 1)))


def test_branches_take_the_widest_and_explicit_padding_moves_the_start():
    f = receptive.receptive_fields(Branches(), ["a", "b", "c"], (3, 24, 24))
    assert f["a"].size == (3, 3) and f["b"].size == (7, 7)
    assert f["c"].size == (9, 9) and f["c"].jump == (2, 2) and f["c"].start == (0.0, 0.0)  # 7 + 2, s: -1 + 1


@pytest.mark.parametrize("net, layers, size", [
    (tiny_net, list(HAND), (3, 32, 32)),
    (Branches, ["a", "b", "c"], (3, 24, 24)),
])
def test_architecture_equals_gradient_on_small_nets(net, layers, size):
    torch.manual_seed(0)
    model = net()
    fields = receptive.receptive_fields(model, layers, size)
    for name in layers:
        for unit in (None, (0, 0)):  # the centre, and a corner unit whose field runs over the border
            extent, at = receptive.gradient_extent(model, name, size, unit=unit)
            box, clipped = fields[name].box(*at, size[1], size[2])
            assert extent == box, (name, at)
            if unit == (0, 0) and fields[name].size[0] > 1:
                assert clipped


def test_mobilenet_v2_architecture_equals_gradient():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2()  # random weights: the field is the architecture's
    layers = ["features.0", "features.1", "features.3", "features.6", "features.10", "features.14"]
    fields = receptive.receptive_fields(model, layers, (3, 64, 64))
    assert fields["features.0"].size == (3, 3) and fields["features.0"].jump == (2, 2)
    assert fields["features.14"].jump == (32, 32)
    for name in layers:
        extent, at = receptive.gradient_extent(model, name, (3, 64, 64), samples=2)
        assert extent == fields[name].box(*at, 64, 64)[0], name


def test_timm_convnext_channels_last_blocks_are_followed():
    import timm

    model = timm.create_model("test_convnext")  # permutes to (B, H, W, C) for its LayerNorm and MLP
    fields = receptive.receptive_fields(model, ["stem", "stages.0"], (3, 64, 64))
    assert fields["stem"].size == (4, 4) and fields["stem"].jump == (4, 4)
    extent, at = receptive.gradient_extent(model, "stages.0", (3, 64, 64), samples=2)
    assert extent == fields["stages.0"].box(*at, 64, 64)[0]


def test_a_squeeze_excitation_gate_widens_the_field_only_when_asked():
    import timm

    model = timm.create_model("test_efficientnet")
    narrow = receptive.receptive_fields(model, ["blocks.3"], (3, 64, 64))["blocks.3"]
    wide = receptive.receptive_fields(model, ["blocks.3"], (3, 64, 64), through_gates=True)["blocks.3"]
    assert not narrow.whole and wide.whole
    assert wide.box(0, 0, 64, 64) == ((0, 0, 64, 64), True)
    extent, _ = receptive.gradient_extent(model, "blocks.3", (3, 64, 64), samples=2)
    assert extent == (0, 0, 64, 64)  # the gradient sees through the SE gate's global pool
