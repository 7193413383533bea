"""Does a heatmap point at what the model uses? Deletion and insertion scores (Petsiuk et al. 2018, "RISE"),
with two baselines so a number means something.

- **Deletion**: the image's pixels are replaced by a blurred copy of the image, most important first (the
  order the map ranks them), in `steps` equal steps; the model's probability of the target class after each
  step makes a curve from 0 to 1 % of pixels removed. Its area (AUC, trapezoid) is *low* for a faithful map:
  removing what it points at makes the model lose its answer fast.
- **Insertion**: from the blurred image, the pixels are put back in the same order; the AUC is *high* for a
  faithful map.
- **Baselines**: a random map (seeded) and a centred Gaussian blob, scored the same way on the same image: a
  method that does no better than the blob only says "objects are in the middle".

The fill is a Gaussian blur (sigma an eighth of the image side), not black: black pixels are an input the
model never saw, and their own effect would be scored as the map's. The model runs in eval mode without
gradients; its train flags are put back (`_modes.inference`) and nothing of it is changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torchvision.transforms.functional as TF

from vislab._modes import inference

FILL = "blur"
STEPS = 20


@dataclass
class Scores:
    deletion_auc: float  # lower is better
    insertion_auc: float  # higher is better
    deletion: list[float]  # the target's probability after each step (steps + 1 values)
    insertion: list[float]


def blurred(x: torch.Tensor) -> torch.Tensor:
    """The fill: a (1, C, H, W) image blurred with sigma = side / 8 (an odd kernel of about 4 sigma)."""
    sigma = max(x.shape[-1], x.shape[-2]) / 8
    kernel = int(4 * sigma) | 1
    return TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])


def _masks(saliency: np.ndarray, steps: int) -> torch.Tensor:
    """(steps + 1, 1, H, W): step k marks the k/steps most salient pixels (ties broken by position)."""
    flat = np.asarray(saliency, dtype=np.float64).ravel()
    order = np.argsort(-flat, kind="stable")
    masks = np.zeros((steps + 1, flat.size), dtype=np.float32)
    for k in range(1, steps + 1):
        masks[k, order[:round(k / steps * flat.size)]] = 1.0
    return torch.from_numpy(masks.reshape(steps + 1, 1, *np.shape(saliency)))


def score(model: nn.Module, x: torch.Tensor, saliency: np.ndarray, target: int, steps: int = STEPS,
          batch_size: int = 16, fill: float | torch.Tensor | None = None) -> Scores:
    """Deletion and insertion of `x` (1, C, H, W, as the model takes it) in the order of `saliency` (H, W).

    `fill` is what a removed pixel becomes: None (the default) is `blurred(x)`; a number or a tensor that
    broadcasts to `x` replaces it, so the curve can be checked against Quantus's constant baselines
    (tests/test_faithfulness_quantus.py)."""
    if tuple(np.shape(saliency)) != tuple(x.shape[-2:]):
        raise ValueError(f"the map is {np.shape(saliency)}, the image {tuple(x.shape[-2:])}: resize the map first")
    fill = blurred(x) if fill is None else torch.as_tensor(fill, dtype=x.dtype, device=x.device).expand_as(x)
    masks = _masks(saliency, steps).to(x.device)  # (S, 1, H, W), 1 = the step has reached this pixel
    curves = {}
    with inference(model):
        for name, images in (("deletion", x * (1 - masks) + fill * masks),
                             ("insertion", fill * (1 - masks) + x * masks)):
            probs = [model(images[i:i + batch_size]).float().softmax(1)[:, target]
                     for i in range(0, len(images), batch_size)]
            curves[name] = torch.cat(probs).cpu().numpy()
    auc = {name: float((c[:-1] + c[1:]).sum() / (2 * steps)) for name, c in curves.items()}  # trapezoid on [0, 1]
    return Scores(auc["deletion"], auc["insertion"], curves["deletion"].tolist(), curves["insertion"].tolist())


def random_map(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A baseline: every pixel's importance drawn at random (seeded)."""
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def centre_blob(shape: tuple[int, int]) -> np.ndarray:
    """A baseline: a Gaussian in the middle of the image (sigma a quarter of each side)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.exp(-(((yy - (h - 1) / 2) / (h / 4)) ** 2 + ((xx - (w - 1) / 2) / (w / 4)) ** 2) / 2)


def with_baselines(model: nn.Module, x: torch.Tensor, saliency: np.ndarray, target: int, steps: int = STEPS,
                   seed: int = 0) -> dict[str, Scores]:
    """The map's scores beside the random map's and the centred blob's, on the same image and target."""
    shape = tuple(x.shape[-2:])
    return {"map": score(model, x, saliency, target, steps), "random": score(model, x, random_map(shape, seed),
                                                                            target, steps),
            "centre": score(model, x, centre_blob(shape), target, steps)}


def baselines(shape: tuple[int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """The two baselines' maps by the names `with_baselines` gives their scores: for a caller that scores
    several maps of one image (the CAM page's methods) and needs the baselines only once."""
    return {"random": random_map(shape, seed), "centre": centre_blob(shape)}
