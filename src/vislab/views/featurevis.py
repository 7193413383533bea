"""Feature visualisation by optimisation: an input image grown to excite one channel (Olah et al., Distill 2017).

The image is not optimised pixel by pixel (that gives high-frequency noise the network also answers to):
as in Lucid / Lucent it is parameterised by its Fourier spectrum scaled by 1/frequency (`fft`), in a
decorrelated colour space (`decorrelate`, Lucid's ImageNet colour-correlation square root), squashed by a
sigmoid into [0, 1]; every step sees it padded, jittered, randomly scaled and rotated a little, so only
patterns that survive those transformations grow. The objective is the channel's mean activation at the
layer; Adam climbs it. A fixed `seed` gives the same image (the start spectrum and every random transform
come from one seeded generator; CPU kernels are deterministic).

Why not torch-lucent (the PyTorch port of Lucid): its last release (0.1.8) pins kornia<=0.4.1 (2020) and
needs IPython, pytest-mock, coverage and coveralls at run time (`pip install --dry-run torch-lucent` pulls
25 packages into the lab); importing it fails without IPython; its `render_vis` loop has no progress
callback or stop flag (a tqdm bar), and its parameterisations pick `cuda:0` on their own whatever device
the model is on. The parts used here (the FFT image, the colour matrix, the transform list) are short, and
are written after Lucid's `spatial.py`, `color.py` and `transform.py`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vislab._hooks import temporary_hooks
from vislab._modes import training_mode

# Lucid's square root of the ImageNet colour correlation matrix (columns normalised to the largest norm)
_COLOR_SQRT = np.asarray([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32)
_COLOR = _COLOR_SQRT / np.max(np.linalg.norm(_COLOR_SQRT, axis=0))


@dataclass
class VisConfig:
    size: int = 128  # the image's side in pixels
    steps: int = 256  # Adam steps
    lr: float = 0.05
    fft: bool = True  # 1/f-scaled Fourier parameterisation (else plain pixels)
    decorrelate: bool = True  # optimise in decorrelated colour space
    jitter: int = 8  # pixels of random translation per step (0: none)
    scales: tuple[float, ...] = (1.0, 0.975, 1.025, 0.95, 1.05)  # one picked at random each step
    angles: tuple[float, ...] = (-5.0, -2.5, 0.0, 2.5, 5.0)  # degrees, one picked at random each step
    seed: int = 0


@dataclass
class Visualisation:
    layer: str
    channel: int
    image: np.ndarray  # (size, size, 3) uint8
    objective: list[float] = field(default_factory=list)  # the channel's mean activation at each step
    steps: int = 0  # steps done (fewer than asked when stopped)
    stopped: bool = False
    seconds: float = 0.0


class _Reached(Exception):
    """Raised in the layer's hook: nothing after the layer needs to run."""


def _fft_freqs(h: int, w: int) -> np.ndarray:
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[: w // 2 + 1]
    return np.sqrt(fx * fx + fy * fy)  # (h, w // 2 + 1)


class _Image(nn.Module):
    """The parameterised image: `forward()` gives (1, 3, H, W) in [0, 1]."""

    def __init__(self, size: int, fft: bool, decorrelate: bool, generator: torch.Generator, sd: float = 0.01):
        super().__init__()
        self.size, self.fft, self.decorrelate = size, fft, decorrelate
        if fft:
            freqs = _fft_freqs(size, size)
            self.spectrum = nn.Parameter(torch.randn(1, 3, *freqs.shape, 2, generator=generator) * sd)
            scale = 1.0 / np.maximum(freqs, 1.0 / size)  # 1/f: every frequency band starts equally strong
            self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32)[None, None, ..., None])
        else:
            self.pixels = nn.Parameter(torch.randn(1, 3, size, size, generator=generator) * sd)
        self.register_buffer("color", torch.from_numpy(_COLOR.T.copy()))

    def forward(self) -> torch.Tensor:
        if self.fft:
            spectrum = torch.view_as_complex(self.scale * self.spectrum)  # (1, 3, h, w//2+1)
            img = torch.fft.irfftn(spectrum, s=(self.size, self.size), norm="ortho") / 4.0  # Lucid's constant
        else:
            img = self.pixels  # (1, 3, H, W)
        if self.decorrelate:
            img = torch.einsum("bchw,cd->bdhw", img, self.color)
        return torch.sigmoid(img)


def _transform(img: torch.Tensor, cfg: VisConfig, g: torch.Generator) -> torch.Tensor:
    """Pad, jitter, scale, rotate, jitter (Lucid's standard transforms), (1, 3, H, W) -> (1, 3, H', W')."""
    pad = cfg.jitter + 4 if cfg.jitter else 0

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=g))]

    def jitter(t, d):
        if d <= 0:
            return t
        dy, dx = (int(v) for v in torch.randint(d + 1, (2,), generator=g))
        return t[..., dy:t.shape[-2] - (d - dy), dx:t.shape[-1] - (d - dx)]

    t = F.pad(img, (pad,) * 4, mode="constant", value=0.5) if pad else img
    t = jitter(t, cfg.jitter)
    s, a = pick(cfg.scales), math.radians(pick(cfg.angles))
    if s != 1.0 or a != 0.0:
        theta = torch.tensor([[math.cos(a) / s, -math.sin(a) / s, 0.0],
                              [math.sin(a) / s, math.cos(a) / s, 0.0]], dtype=t.dtype, device=t.device)[None]
        grid = F.affine_grid(theta, list(t.shape), align_corners=False)
        t = F.grid_sample(t, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return jitter(t, max(cfg.jitter // 2, 0))


def _layer_output(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []

    def hook(module, args, output):
        seen.append(output[0] if isinstance(output, (tuple, list)) else output)
        raise _Reached

    try:
        with temporary_hooks([(layer, hook)]):
            model(x)
    except _Reached:
        pass
    if not seen:
        raise ValueError("the layer did not run in the forward pass")
    return seen[0]


def _normalise(img: torch.Tensor, data_config) -> torch.Tensor:
    mean = torch.tensor(data_config.mean, dtype=img.dtype, device=img.device).view(1, -1, 1, 1)
    std = torch.tensor(data_config.std, dtype=img.dtype, device=img.device).view(1, -1, 1, 1)
    return (img - mean) / std


def _channel_mean(out: torch.Tensor, channel: int, model: nn.Module) -> torch.Tensor:
    if out.dim() != 4:
        raise ValueError(f"the layer's output is {tuple(out.shape)}, not a (B, C, H, W) feature map")
    if not 0 <= channel < out.shape[1]:
        raise ValueError(f"the layer has {out.shape[1]} channels (0-{out.shape[1] - 1}); there is no channel {channel}")
    return out[:, channel].mean(dim=(1, 2))  # (B,)


def visualise(model: nn.Module, layer: str, channel: int, data_config, config: VisConfig | None = None,
              on_progress: Callable[[int, int, float], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> Visualisation:
    """An image that excites `channel` of `layer`: `config.steps` Adam steps on the mean activation.

    `on_progress(step, steps, objective)` after each step (every step: cheap); `should_stop()` ends early
    with the image so far. The model is in eval mode throughout, its parameters get no gradients, and its
    training flags are put back.
    """
    cfg = config or VisConfig()
    start = time.perf_counter()
    module = model.get_submodule(layer)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    g = torch.Generator().manual_seed(cfg.seed)
    image = _Image(cfg.size, cfg.fft, cfg.decorrelate, g).to(device)
    opt = torch.optim.Adam(image.parameters(), lr=cfg.lr)
    objective: list[float] = []
    stopped = False
    with training_mode(model, False), torch.enable_grad():
        for step in range(cfg.steps):
            if should_stop and should_stop():
                stopped = True
                break
            x = _normalise(_transform(image(), cfg, g), data_config)  # (1, 3, H', W')
            value = _channel_mean(_layer_output(model, module, x), channel, model)[0]
            opt.zero_grad(set_to_none=True)
            grads = torch.autograd.grad(-value, list(image.parameters()))  # the model's weights get none
            for p, gr in zip(image.parameters(), grads):
                p.grad = gr
            opt.step()
            objective.append(float(value.detach()))
            if on_progress:
                on_progress(step + 1, cfg.steps, objective[-1])
    with torch.no_grad():
        final = image()[0].permute(1, 2, 0).cpu().numpy()  # (H, W, 3) in [0, 1]
    return Visualisation(layer, channel, (final * 255).round().astype(np.uint8), objective, len(objective), stopped,
                         time.perf_counter() - start)
