"""Errors you can open: the validation images of one confusion-matrix cell (true A, predicted B), each with
Grad-CAM for the class the model picked *and* for the class it should have picked.

One map alone shows where the model looked for its answer; the pair shows the disagreement: whether the
evidence for the true class sat in the same place (the model saw the object and weighed it wrongly) or
nowhere (a flat map: Grad-CAM found no positive evidence for the true class at that layer). Both maps come
from grad-cam's GradCAM through `cam.run`, the CAM page's own call, in one forward and backward pass over
the batch twice (once per target class). Nothing here is cached: the page caches per run and cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from vislab._modes import inference
from vislab.data.transforms import crop_seen, load_image
from vislab.training.evaluation import Predictions
from vislab.views import cam, explain, base as views

METHOD = "GradCAM"
MAX_IMAGES = 12  # a cell opens at most this many images (the highest losses first); the page says how many


@dataclass
class Cell:
    true: int
    predicted: int
    count: int

    @property
    def error(self) -> bool:
        return self.true != self.predicted


@dataclass
class Explained:
    """One image with Grad-CAM for two classes: index 0 is the predicted class, index 1 the true class."""

    path: str
    crop: Image.Image  # the square the model saw
    probs: np.ndarray  # (K,) softmax of this forward pass
    classes: tuple[int, int]  # (predicted, true)
    maps: np.ndarray  # (2, S, S) in [0, 1]; a map of all zeros is flat (no positive evidence for that class)
    overlays: list[Image.Image]  # two, over `crop`

    def flat(self, which: int) -> bool:
        return not float(self.maps[which].max()) > 0


def cells(preds: Predictions, num_classes: int) -> list[Cell]:
    """The confusion matrix's non-empty cells: errors first (most images first), then the diagonal."""
    found: dict[tuple[int, int], int] = {}
    for y, k in zip(preds.labels.tolist(), preds.predicted.tolist()):
        if 0 <= y < num_classes and 0 <= k < num_classes:
            found[(int(y), int(k))] = found.get((int(y), int(k)), 0) + 1
    out = [Cell(y, k, n) for (y, k), n in found.items()]
    return sorted(out, key=lambda c: (not c.error, -c.count, c.true, c.predicted))


def in_cell(preds: Predictions, true: int, predicted: int) -> list[int]:
    """Indices of the validation images with this (true, predicted) pair, the highest loss first."""
    hit = np.flatnonzero((preds.labels == true) & (preds.predicted == predicted))
    return [int(i) for i in hit[np.argsort(-preds.losses[hit], kind="stable")]]


def explain_pairs(model: nn.Module, data_config, paths: list[str], predicted: list[int], true: list[int],
                  layer: str, colormap: str = "jet", opacity: float = 0.5) -> list[Explained]:
    """Grad-CAM at `layer` for each image of `paths`, once for its class in `predicted` and once for its class
    in `true`, with the model's probabilities; overlays on the crop the model saw (`colormap`: matplotlib's
    name). At most MAX_IMAGES images: a cell is opened on demand, never a whole validation set."""
    if not (len(paths) == len(predicted) == len(true)):
        raise ValueError("one predicted and one true class per image is needed")
    if len(paths) > MAX_IMAGES:
        raise ValueError(f"at most {MAX_IMAGES} images at a time (got {len(paths)})")
    if not paths:
        return []
    images = [load_image(p) for p in paths]
    device = next(model.parameters()).device
    x = views.batch(images, data_config).to(device)  # (B, 3, S, S)
    with inference(model):
        probs = model(x).float().softmax(1).cpu().numpy()  # (B, K)
    both = torch.cat([x, x])  # (2B, 3, S, S): the batch once per target class, one backward for all
    maps = cam.run(model, both, [METHOD], layer, [int(k) for k in predicted] + [int(y) for y in true])[0].maps
    b = len(paths)
    out = []
    for i, (path, img) in enumerate(zip(paths, images)):
        crop = crop_seen(img, data_config).convert("RGB")
        pair = np.stack([maps[i], maps[b + i]])  # (2, S, S)
        overlays = [explain.overlay(crop, m, colormap, opacity) if m.max() > 0 else crop for m in pair]
        out.append(Explained(path, crop, probs[i], (int(predicted[i]), int(true[i])), pair, overlays))
    return out
