"""Looking inside a CNN: first-layer filters, feature maps, and how much training moved them.

The course's "visualizing CNNs" views, on a plain nn.Module: the first RGB convolution's filters as colour
tiles, the layers whose outputs are spatial maps (SE blocks' pooled 1x1 convolutions left out), one layer's
maps from one eval forward (`views.forward_with_hooks`: hook removed, training flags put back), its
strongest channels, and the relative change of maps between two models. A model without what a view
shows raises `views.ViewNotApplicable`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from vislab.views.se import find_se_blocks
from vislab._hooks import forward_with_hooks
from vislab.views.base import ViewNotApplicable

_NORMS_2D = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)  # plus any class named *Norm2d


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first Conv2d (definition order) that reads the 3 RGB channels: the filters a person can look at."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3 and module.groups == 1:
            return name, module
    raise ViewNotApplicable("convolution on RGB input", model, ("alexnet", "resnet18", "mobilenet_v2"))


def filter_grid(conv: nn.Conv2d, pad: int = 1, scale: int | None = None) -> np.ndarray:
    """Every filter of an RGB convolution as a small colour tile, tiled in a near-square grid.

    Each filter is min-max normalised to [0, 1] on its own (shapes, not magnitudes, are what a 3x3 or
    11x11 filter shows), upscaled `scale` times by pixel repetition (default: tiles about 32 px wide),
    and separated by `pad` white pixels. Returns (H, W, 3) uint8 with
    H = rows * (k * scale + pad) + pad and W = cols * (k * scale + pad) + pad.
    """
    w = conv.weight.detach().float().cpu()  # (O, 3, kh, kw)
    if w.shape[1] != 3:
        raise ValueError(f"filter_grid needs a convolution on 3 channels, this one reads {w.shape[1]}")
    out_ch, _, kh, kw = w.shape
    scale = scale or max(1, 32 // max(kh, kw))
    lo = w.amin(dim=(1, 2, 3), keepdim=True)
    hi = w.amax(dim=(1, 2, 3), keepdim=True)
    tiles = ((w - lo) / (hi - lo).clamp_min(1e-12)).permute(0, 2, 3, 1).numpy()  # (O, kh, kw, 3) in [0, 1]
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)  # (O, kh*s, kw*s, 3)
    cols = math.ceil(math.sqrt(out_ch))
    rows = math.ceil(out_ch / cols)
    th, tw = kh * scale, kw * scale
    grid = np.ones((rows * (th + pad) + pad, cols * (tw + pad) + pad, 3), dtype=np.float32)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = pad + r * (th + pad), pad + c * (tw + pad)
        grid[y:y + th, x:x + tw] = tile
    return (grid * 255).round().astype(np.uint8)


def activations(model: nn.Module, layer_name: str, x: torch.Tensor) -> torch.Tensor:
    """The output of `layer_name` for a batch, (B, C, H, W) on the CPU, from one eval-mode forward."""
    layer = model.get_submodule(layer_name)
    seen: list[torch.Tensor] = []

    def hook(module, args, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        seen.append(out.detach().clone())  # clone: later in-place ops (ReLU, +=) must not change it

    forward_with_hooks(model, [(layer, hook)], x)
    if not seen:
        raise ValueError(f"layer {layer_name} did not run in the forward pass")
    out = seen[0]
    if out.dim() != 4:
        raise ViewNotApplicable(f"spatial feature maps at {layer_name} (its output is {tuple(out.shape)})", model)
    return out.cpu()


def top_channels(acts: torch.Tensor | np.ndarray, n: int) -> list[int]:
    """The `n` channels of one image's maps (C, H, W) with the highest mean activation, strongest first."""
    means = torch.as_tensor(acts).float().mean(dim=(1, 2))  # (C,)
    return means.argsort(descending=True)[:n].tolist()


def map_change(maps_before: torch.Tensor | np.ndarray, maps_after: torch.Tensor | np.ndarray) -> float:
    """Relative L2 change ||after - before|| / ||before||: exactly 0.0 for a layer that did not move."""
    before = torch.as_tensor(maps_before).double()
    after = torch.as_tensor(maps_after).double()
    if before.shape != after.shape:
        raise ValueError(f"maps differ in shape: {tuple(before.shape)} vs {tuple(after.shape)}")
    return float((after - before).norm() / before.norm().clamp_min(1e-12))


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the convolution and 2D normalisation layers whose outputs are feature maps, in order.

    The 1x1 convolutions inside Squeeze-and-Excitation blocks act on pooled (C, 1, 1) vectors, so they
    are left out. LayerNorm2d-style layers (timm's ConvNeXt) count; channels-last LayerNorm does not.
    """
    se_blocks = tuple(f"{b}." for b in find_se_blocks(model))
    names = []
    for name, module in model.named_modules():
        spatial = isinstance(module, (nn.Conv2d, *_NORMS_2D)) or type(module).__name__.endswith("Norm2d")
        if spatial and not name.startswith(se_blocks):
            names.append(name)
    return names
