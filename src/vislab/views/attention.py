"""Self-attention maps of timm Vision Transformers, the class token's view, and attention rollout.

timm computes attention with `F.scaled_dot_product_attention` by default (`fused_attn=True` on every
Attention module), so the softmax probabilities never exist as a tensor and hooks see nothing. While
extracting we switch each module's `fused_attn` off, which takes timm's explicit path
(`softmax(q k^T * scale)` then `attn_drop`), hook `attn_drop` (identity in eval mode, so its output is the
probabilities) and restore the flags in `finally`. The logits are the same either way, up to float error.

timm's own `timm.utils.AttentionExtract` is not used: in hook mode it registers hooks it never removes
and leaves the model in eval mode, and in fx mode it traces the model into a new graph module.

A CNN with the attention head (`heads.AttentionHead`, a hybrid) has the same timm blocks on top of its last
feature map: its tokens are the map's cells (one cell = the backbone's stride in pixels, 32 for
mobilenet_v2) and a class token. `view` reads either kind: maps, token grid, prefix tokens and cell size.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from vislab._hooks import forward_with_hooks
from vislab.models.heads import AttentionHead
from vislab.views.base import ViewNotApplicable

ATTENTION_MODELS = ("vit_tiny_patch16_224",)  # catalog models with self-attention, for error messages
HEAD_FUSIONS = ("mean", "max", "min")


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """timm attention modules that can show their maps: a `fused_attn` flag and an `attn_drop` child."""
    return [(name, m) for name, m in model.named_modules()
            if hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), nn.Module)
            and not hasattr(m, "window_size")]  # Swin's windowed attention has no class token or global map


def why_not(model: nn.Module) -> str | None:
    """A precise reason for models that do attend, but not in a way these maps can show."""
    kind = type(model).__name__
    if any("WindowAttention" in type(m).__name__ or (hasattr(m, "fused_attn") and hasattr(m, "window_size"))
           for m in model.modules()):
        return (f"{kind} attends within local windows (Swin): there is no class token and no global "
                "attention map to show.")
    if any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        return (f"{kind} computes attention inside torch's nn.MultiheadAttention, which does not hand out its "
                "maps here; timm's version of the model (e.g. vit_base_patch16_224 for torchvision's vit_b_16) "
                "shows them.")
    attn = sorted({type(m).__name__ for m in model.modules() if "Attention" in type(m).__name__})
    if attn:
        return (f"{kind} has attention ({', '.join(attn[:3])}), but not ViT blocks with a class token over "
                "patch tokens, which is what these maps and rollout read.")
    return None


def has_attention(model: nn.Module) -> bool:
    return bool(attention_modules(model))


@contextmanager
def unfused_attention(model: nn.Module):
    """Every attention module takes timm's explicit softmax path inside the block; flags restored after."""
    mods = [m for _, m in attention_modules(model)]
    flags = [m.fused_attn for m in mods]
    try:
        for m in mods:
            m.fused_attn = False
        yield
    finally:
        for m, flag in zip(mods, flags):
            m.fused_attn = flag


def attention_maps(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Softmax attention of every block for a batch, each (B, heads, N, N) with rows summing to 1.

    N = prefix tokens (class, registers) + patches; one eval-mode forward without gradients.
    """
    mods = attention_modules(model)
    if not mods:
        raise ViewNotApplicable("self-attention blocks", model, ATTENTION_MODELS, why_not(model))
    maps: dict[str, torch.Tensor] = {}

    def make(name):
        def hook(module, args, output):
            maps[name] = output.detach().float().cpu().clone()  # (B, heads, N, N)
        return hook

    with unfused_attention(model):
        forward_with_hooks(model, [(m.attn_drop, make(name)) for name, m in mods], x)
    return [maps[name] for name, _ in mods if name in maps]


def patch_grid(model: nn.Module, x: torch.Tensor | tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of patch tokens for an input batch (or an (H, W) size), for any patch and image size."""
    size = tuple(x.shape[-2:]) if isinstance(x, torch.Tensor) else tuple(x)
    embed = getattr(model, "patch_embed", None)
    if embed is None:
        raise ViewNotApplicable("patch embedding", model, ATTENTION_MODELS)
    if hasattr(embed, "dynamic_feat_size"):  # handles dynamic image size and padding
        return tuple(int(v) for v in embed.dynamic_feat_size(size))
    return tuple(int(v) for v in embed.grid_size)


def num_prefix_tokens(model: nn.Module) -> int:
    """Class and register tokens that come before the patches."""
    return int(getattr(model, "num_prefix_tokens", 1))


def _one_image(maps, image: int) -> np.ndarray:
    """Maps as (layers, heads, N, N) for one image; accepts (B, heads, N, N) or (heads, N, N) per layer."""
    layers = [np.asarray(m.detach().cpu() if isinstance(m, torch.Tensor) else m, dtype=np.float64) for m in maps]
    return np.stack([m[image] if m.ndim == 4 else m for m in layers])


def _check_grid(n_tokens: int, prefix: int, grid: tuple[int, int]) -> None:
    if grid[0] * grid[1] != n_tokens - prefix:
        raise ValueError(f"{n_tokens} tokens do not fit {prefix} prefix tokens and a {grid[0]}x{grid[1]} grid")


def cls_attention(maps, num_prefix_tokens: int, grid: tuple[int, int], image: int = 0) -> np.ndarray:
    """How much the class token attends to each patch: (layers, heads, gh, gw) for one image.

    Models without a class token (num_prefix_tokens 0) use the mean over all query tokens instead.
    """
    a = _one_image(maps, image)  # (L, h, N, N)
    _check_grid(a.shape[-1], num_prefix_tokens, grid)
    rows = a[:, :, 0, :] if num_prefix_tokens else a.mean(axis=2)  # (L, h, N)
    return rows[:, :, num_prefix_tokens:].reshape(a.shape[0], a.shape[1], *grid)


def _discard(fused: np.ndarray, prefix: int, ratio: float) -> np.ndarray:
    """Zero the lowest `ratio` fraction of attention to patches; attention to prefix tokens always stays."""
    out = fused.copy()
    patches = out[:, prefix:]  # view: (N, N - prefix)
    k = int(patches.size * ratio)
    if k:
        lowest = np.argsort(patches, axis=None, kind="stable")[:k]
        patches.flat[lowest] = 0.0
    return out


def rollout(maps, grid: tuple[int, int] | None = None, num_prefix_tokens: int = 1, head_fusion: str = "mean",
            discard_ratio: float = 0.0, image: int = 0) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020) for one image, (gh, gw) scaled so the maximum is 1.

    Per layer: fuse heads (mean / max / min), zero the weakest `discard_ratio` of attention to patches,
    add the identity for the residual path and renormalise rows; multiply the layers input to output and
    read the class token's row over the patches (mean over query tokens without a class token).
    `grid` None means a square grid.
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}, not '{head_fusion}'")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError("discard_ratio must be in [0, 1)")
    a = _one_image(maps, image)  # (L, h, N, N)
    n, prefix = a.shape[-1], num_prefix_tokens
    if grid is None:
        side = int(round((n - prefix) ** 0.5))
        grid = (side, side)
    _check_grid(n, prefix, grid)
    result = np.eye(n)
    for layer in a:
        fused = getattr(layer, head_fusion)(axis=0)  # (N, N)
        fused = _discard(fused, prefix, discard_ratio)
        fused = fused + np.eye(n)
        fused = fused / fused.sum(axis=-1, keepdims=True)
        result = fused @ result
    row = result[0] if prefix else result.mean(axis=0)  # (N,)
    mask = row[prefix:].reshape(grid)
    return mask / mask.max()


@dataclass
class AttentionView:
    """One forward's attention, with what is needed to lay it on the image."""

    maps: list[torch.Tensor]  # per block (B, heads, T, T), rows sum to 1; T = prefix + gh * gw
    grid: tuple[int, int]  # (gh, gw) token grid
    num_prefix_tokens: int  # class (and register) tokens before the grid tokens
    image_size: tuple[int, int]  # (H, W) of the input
    hybrid: bool  # the attention head on a CNN's feature map (else a ViT's patches)

    @property
    def cell(self) -> tuple[float, float]:
        """Pixels of input per grid cell, (rows, cols): a ViT's patch size, a CNN's stride."""
        return self.image_size[0] / self.grid[0], self.image_size[1] / self.grid[1]

    def cls(self, image: int = 0) -> np.ndarray:
        """The class token's attention over the grid, (blocks, heads, gh, gw), for one image."""
        return cls_attention(self.maps, self.num_prefix_tokens, self.grid, image)

    def row_sum_error(self) -> float:
        """Largest |sum of an attention row - 1| over all blocks, heads, images and tokens."""
        return max(float((m.double().sum(-1) - 1).abs().max()) for m in self.maps)

    def rollout(self, head_fusion: str = "mean", discard_ratio: float = 0.0, image: int = 0) -> np.ndarray:
        return rollout(self.maps, self.grid, self.num_prefix_tokens, head_fusion, discard_ratio, image)


def _attention_head(model: nn.Module) -> nn.Module | None:
    return next((m for m in model.modules() if isinstance(m, AttentionHead)), None)


def view(model: nn.Module, x: torch.Tensor) -> AttentionView:
    """Attention of every block of a ViT or of a CNN's attention head for a batch `x` (B, 3, H, W)."""
    head = _attention_head(model)
    if head is None:
        maps = attention_maps(model, x)
        return AttentionView(maps, patch_grid(model, x), num_prefix_tokens(model), tuple(x.shape[-2:]), False)
    mods = attention_modules(head)
    maps: dict[str, torch.Tensor] = {}
    grid: list[tuple[int, int]] = []

    def make(name):
        def hook(module, args, output):
            maps[name] = output.detach().float().cpu().clone()  # (B, heads, T, T)
        return hook

    def feature_map(module, args, output):
        grid.append(tuple(int(v) for v in args[0].shape[-2:]))  # the (B, C, gh, gw) map the head reads

    with unfused_attention(head):
        forward_with_hooks(model, [(m.attn_drop, make(name)) for name, m in mods] + [(head, feature_map)], x)
    return AttentionView([maps[name] for name, _ in mods], grid[0], head.num_prefix_tokens,
                         tuple(x.shape[-2:]), True)
