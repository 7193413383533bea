"""What a model is made of: every module with its real name, type, output shape, parameters and state."""

from __future__ import annotations

import torch
import torch.nn as nn

from vislab._hooks import forward_with_hooks
from vislab.models import freezing, stages


def output_shapes(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, tuple]:
    """Module name -> output shape (without the batch dim) from one eval forward pass at `input_size`."""
    shapes: dict[str, tuple] = {}

    def record(name: str):
        def hook(mod, args, out):
            if isinstance(out, torch.Tensor):
                shapes[name] = tuple(out.shape[1:])
            elif isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
                shapes[name] = tuple(out[0].shape[1:])
        return hook

    device = next(model.parameters()).device
    hooks = [(module, record(name)) for name, module in model.named_modules() if name]
    forward_with_hooks(model, hooks, torch.zeros(1, *input_size, device=device))  # (1, C, H, W)
    return shapes


def module_rows(model: nn.Module, shapes: dict[str, tuple], depth: int | None = None) -> list[dict]:
    """One row per module that holds parameters directly (or up to `depth` dots), in definition order.

    `shapes` comes from `output_shapes` (computed once per model and input size)."""
    owner = stages.stage_of_modules(model)
    rows = []
    for name, module in model.named_modules():
        if not name:
            continue
        own = list(module.parameters(recurse=False))
        if depth is not None:
            if name.count(".") + 1 > depth:
                continue
            own = list(module.parameters())
        if not own:
            continue
        n = sum(p.numel() for p in own)
        trainable = sum(p.numel() for p in own if p.requires_grad)
        rows.append({
            "module": name, "type": type(module).__name__, "stage": owner.get(name, ""),
            "output": " x ".join(map(str, shapes.get(name, ()))) or "-",
            "params": n, "trainable": trainable,
            "state": "trainable" if trainable == n else "frozen" if trainable == 0 else "partly",
            "bn_mode": freezing.bn_mode(module) if freezing.is_batchnorm(module) else "",
        })
    return rows


def stage_rows(model: nn.Module, shapes: dict[str, tuple]) -> list[dict]:
    """freezing.stage_summary plus each stage's output shape (that of its last module)."""
    rows = freezing.stage_summary(model)
    for row in rows:
        last = row["modules"][-1] if row["modules"] else ""
        row["output"] = " x ".join(map(str, shapes.get(last, ()))) or "-"
    return rows
