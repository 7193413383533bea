"""What the view modules (features, se, attention, cam) share: the error for a model that lacks what a
view shows, the batch of images a view runs on, the time one forward takes (what a slow view will cost),
and maps scaled for display. Eval-mode forwards with temporary hooks are `_hooks.forward_with_hooks`
(the training side needs them too).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vislab._modes import inference
from vislab.data.transforms import eval_transform


class ViewNotApplicable(ValueError):
    """The model has nothing this view can show (no SE blocks, no attention, no RGB convolution, ...)."""

    def __init__(self, what: str, model: nn.Module | None, try_models: tuple[str, ...] = (),
                 why: str | None = None):
        hint = f" Try a catalog model that has it: {', '.join(try_models)}." if try_models else ""
        super().__init__(f"{why or f'{type(model).__name__} has no {what}.'}{hint}")


def batch(images: list, cfg) -> torch.Tensor:
    """PIL images as one (B, 3, H, W) batch, each through the model's eval transform (its `DataConfig`)."""
    transform = eval_transform(cfg)
    return torch.stack([transform(img) for img in images])  # (B, 3, H, W)


def forward_seconds(model: nn.Module, input_size: tuple[int, int, int], n: int = 16) -> float:
    """Seconds of one image's eval forward through `model` on its device: a warm-up on 2 images, then one
    timed batch of `n` (zeros: the time does not depend on the pixels)."""
    param = next(model.parameters(), None)
    x = torch.zeros(n, *input_size, device=param.device if param is not None else "cpu")  # (n, C, H, W)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    with inference(model):
        model(x[:2])  # warm-up: lazy init, allocator, kernel choice
        sync()
        start = time.perf_counter()
        model(x)
        sync()
        return (time.perf_counter() - start) / n


def normalise_maps(maps: np.ndarray) -> np.ndarray:
    """Each (H, W) map of a (B, H, W) stack scaled to [0, 1] on its own; a flat map becomes all zeros."""
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32))
    lo = maps.min(axis=(1, 2), keepdims=True)
    hi = maps.max(axis=(1, 2), keepdims=True)
    return np.where(hi > lo, (maps - lo) / np.maximum(hi - lo, 1e-12), 0.0).astype(np.float32)


def fit_map(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One coarse (h, w) map (a patch grid, a CAM) resized bilinearly to `size` (H, W) and scaled to [0, 1],
    ready to lay over the crop the model saw."""
    t = torch.as_tensor(np.asarray(m), dtype=torch.float32)[None, None]  # (1, 1, h, w)
    up = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0]  # (1, H, W)
    return normalise_maps(up.numpy())[0]
