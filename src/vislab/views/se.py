"""Squeeze-and-Excitation: the per-channel weights (gates) a network puts on its own feature maps.

An SE block squeezes a (B, C, H, W) map to (B, C) by global average pooling, runs a small bottleneck
(two 1x1 convolutions) and a gate activation, and multiplies the map by the result:

    out = x * gate(fc2(act(fc1(mean_hw(x)))))        gate: Sigmoid or Hardsigmoid, values in [0, 1]

The gate's output is what we read, with a forward hook on the gate module. Known block types and the
attribute that holds their gate:

    torchvision  SqueezeExcitation            scale_activation  (MobileNetV3: Hardsigmoid, EfficientNet: Sigmoid)
    timm         SqueezeExcite                gate              (EfficientNet, MobileNetV3, GhostNet, ...)
    timm         SEModule (layers)            gate              (SE-ResNet, RegNet, ...)
    timm         SEModule (legacy senet)      sigmoid
    timm         EffectiveSEModule            gate              (VoVNet ESE, one 1x1 conv, hard sigmoid)
    timm         SqueezeExciteCl              gate              (channels-last variant)

Any other module is taken for an SE block when it has a sigmoid-like module under one of those
attribute names and 1x1 convolutions (or linears) whose first input width equals the last output width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn

from vislab._hooks import forward_with_hooks
from vislab.views.base import ViewNotApplicable

SE_TYPES = {  # class name -> attribute holding the gate activation
    "SqueezeExcitation": "scale_activation",
    "QuantizableSqueezeExcitation": "scale_activation",
    "SqueezeExcite": "gate",
    "SEModule": "gate",
    "EffectiveSEModule": "gate",
    "SqueezeExciteCl": "gate",
}
_GATE_ATTRS = ("scale_activation", "gate", "sigmoid")
SE_MODELS = ("mobilenet_v3_small", "efficientnet_b0")  # catalog models with SE blocks, for error messages


def _is_1x1(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1))


def _looks_like_se(module: nn.Module, gate: nn.Module) -> bool:
    """Structural fallback: a sigmoid-like gate and a 1x1 squeeze/expand path that returns to C channels."""
    if "sigmoid" not in type(gate).__name__.lower():
        return False
    fcs = [c for c in module.children() if _is_1x1(c)]
    if not fcs:
        return False
    width_in = getattr(fcs[0], "in_channels", getattr(fcs[0], "in_features", None))
    width_out = getattr(fcs[-1], "out_channels", getattr(fcs[-1], "out_features", None))
    return width_in == width_out


def gate_module(module: nn.Module) -> nn.Module | None:
    """The gate activation of an SE block, or None when `module` is not one."""
    name = type(module).__name__
    if name in SE_TYPES:  # legacy senet.SEModule keeps its gate in `sigmoid`, not `gate`
        attrs = (SE_TYPES[name],) + _GATE_ATTRS
    else:
        attrs = _GATE_ATTRS
    for attr in attrs:
        gate = getattr(module, attr, None)
        if isinstance(gate, nn.Module) and not isinstance(gate, nn.Identity):
            if name in SE_TYPES or _looks_like_se(module, gate):
                return gate
    return None


def find_se_blocks(model: nn.Module) -> list[str]:
    """Dotted names of the model's SE blocks, in definition (= forward) order."""
    return [name for name, module in model.named_modules() if name and gate_module(module) is not None]


def _require_se(model: nn.Module) -> list[str]:
    blocks = find_se_blocks(model)
    if not blocks:
        raise ViewNotApplicable("Squeeze-and-Excitation blocks", model, SE_MODELS)
    return blocks


def pad_rows(rows: list[np.ndarray]) -> np.ndarray:
    """Vectors of different lengths as one (len(rows), max_len) matrix, padded with NaN (a heatmap's gaps)."""
    out = np.full((len(rows), max(len(r) for r in rows)), np.nan, dtype=np.float32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


@dataclass
class SEGates:
    blocks: list[str]  # SE block names, input side first
    gates: list[np.ndarray]  # one per block, (rows, C_i) in [0, 1]; rows are images, or classes (class means)

    def matrix(self, row: int = 0) -> np.ndarray:
        """(blocks, max C) of one image (or class), NaN where a block has fewer channels."""
        return pad_rows([g[row] for g in self.gates])

    def mean_difference(self, a: int = 0, b: int = 1) -> np.ndarray:
        """(blocks,) mean |gate(a) - gate(b)| over each block's channels: 0 where a block ignores the image."""
        return np.nanmean(np.abs(self.matrix(a) - self.matrix(b)), axis=1)


def _gate_hooks(model: nn.Module, blocks: list[str], store: dict) -> list:
    def make(name):
        def hook(module, args, output):
            store[name] = output.detach().flatten(1).float().cpu().clone()  # (B, C, 1, 1) -> (B, C)
        return hook

    return [(gate_module(model.get_submodule(b)), make(b)) for b in blocks]


def se_gates(model: nn.Module, x: torch.Tensor) -> SEGates:
    """Every SE block's gate for a batch `x` (B, 3, H, W), from one eval-mode forward without gradients."""
    blocks = _require_se(model)
    store: dict[str, torch.Tensor] = {}
    forward_with_hooks(model, _gate_hooks(model, blocks, store), x)
    ran = [b for b in blocks if b in store]  # a block the forward never reached has no gate
    return SEGates(ran, [store[b].numpy() for b in ran])


def top_channels(gate: np.ndarray, k: int) -> tuple[list[int], list[int]]:
    """The `k` most boosted channels (highest gate first) and the `k` most suppressed (lowest first)."""
    order = np.argsort(np.asarray(gate), kind="stable")  # ascending
    return order[::-1][:k].tolist(), order[:k].tolist()


def block_input_output(model: nn.Module, block_name: str,
                       x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What one SE block received, its gate and what it returned: (B, C, H, W), (B, C), (B, C, H, W)."""
    block = model.get_submodule(block_name)
    gate = gate_module(block)
    if gate is None:
        raise ValueError(f"{block_name} is not a Squeeze-and-Excitation block")
    seen: dict[str, torch.Tensor] = {}

    def on_block(module, args, output):
        seen["input"], seen["output"] = args[0].detach().clone(), output.detach().clone()

    def on_gate(module, args, output):
        seen["gate"] = output.detach().flatten(1).clone()  # (B, C)

    forward_with_hooks(model, [(block, on_block), (gate, on_gate)], x)
    return seen["input"], seen["gate"], seen["output"]


def class_mean_gates(model: nn.Module, batches: Iterable, num_classes: int,
                     max_batches: int | None = None) -> SEGates:
    """Mean gate per class over a dataset: gates[i] is (num_classes, C_i), NaN for a class never seen.

    `batches` yields (images, labels), e.g. a DataLoader; images go to the model's device.
    """
    blocks = _require_se(model)
    device = next(model.parameters()).device
    sums: dict[str, torch.Tensor] = {}
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for i, (x, y) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        one_hot = nn.functional.one_hot(torch.as_tensor(y).long().cpu(), num_classes).double()  # (B, K)
        gates = se_gates(model, x.to(device))
        for name, g in zip(gates.blocks, gates.gates):
            total = one_hot.T @ torch.from_numpy(g).double()  # (K, C): per-class sums
            sums[name] = sums[name] + total if name in sums else total
        counts += one_hot.sum(0)
    if not sums:
        raise ValueError("no batches to average over")
    ran = [b for b in blocks if b in sums]
    means = [(sums[b] / counts[:, None]).float().numpy() for b in ran]  # 0/0 -> NaN for unseen classes
    return SEGates(ran, means)
