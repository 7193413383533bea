"""What one unit responds to: the image patches of a dataset that excite a channel most (Zeiler & Fergus).

For a few layers from the stem to the last stage, every image goes once through the model (eval mode,
batched, hooks on all the layers at once). Per image and channel the strongest location is kept (or the
`per_image` strongest local maxima, apart by half a receptive field, when there are few images); at the
end each chosen channel's top k are cropped from the image as the model saw it (resized and
center-cropped, de-normalised from the very tensor that went in) to the unit's receptive field around
the location (`receptive.receptive_fields`), clipped at the image border (`Patch.clipped` says so).

What it shows is correlation within these images: the patches are the unit's maxima here, not a proof
that the unit "detects" a concept, and a unit may answer to several unrelated things.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from vislab.models import stages as stages_of
from vislab.views.receptive import ReceptiveField, receptive_fields
from vislab.data.transforms import denormalize, load_image
from vislab._hooks import forward_with_hooks
from vislab.figures.images import image_grid
from vislab.views.base import ViewNotApplicable, batch


@dataclass
class Patch:
    image: int  # index into the images passed in
    value: float  # the channel's activation at `unit`
    unit: tuple[int, int]  # (row, column) in the layer's map
    box: tuple[int, int, int, int]  # (top, left, bottom, right) in the model's input pixels, exclusive
    clipped: bool  # the receptive field runs over the image border (the crop is smaller than the field)
    crop: np.ndarray  # (h, w, 3) uint8: the pixels of `box` as the model saw them


@dataclass
class LayerPatches:
    stage: str  # the stage's name (vislab.models.stages)
    layer: str  # the module whose output is read
    field: ReceptiveField
    channels: list[int]  # the channels shown, in the order chosen (most active first when picked here)
    patches: list[list[Patch]]  # per channel, strongest first
    num_channels: int = 0  # channels the layer has


@dataclass
class UnitPatches:
    layers: list[LayerPatches]
    images_seen: int
    images_total: int
    stopped: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def stage_layers(model: nn.Module, input_size: tuple[int, int, int]) -> list[tuple[str, str]]:
    """(stage name, module read) for each stage whose output is a spatial map traced back to the input, stem
    first: the stages the Freeze page names (the new head left out), each read at its last module."""
    stages = [(s.name, s.modules[-1]) for s in stages_of.stages(model) if s.name != stages_of.HEAD and s.modules]
    fields = receptive_fields(model, [m for _, m in stages], input_size)
    return [(s, m) for s, m in stages if m in fields and not fields[m].whole and fields[m].grid != (1, 1)]


def spread(items: Sequence, n: int) -> list:
    """`n` of `items` spread evenly from the first to the last (all of them when there are no more than n)."""
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / max(n - 1, 1))] for i in range(n)]


def _load(item) -> Image.Image:
    return item if isinstance(item, Image.Image) else load_image(Path(item))


def _peaks(acts: torch.Tensor, per_image: int, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `per_image` strongest locations of each (image, channel) map: values and flat indices (B, C, P).
    Beyond the first, only local maxima at least `radius` cells from a stronger one count."""
    flat = acts.flatten(2)  # (B, C, h*w)
    if per_image == 1:
        idx = flat.argmax(dim=2, keepdim=True)  # the first maximal location on ties
        return flat.gather(2, idx), idx
    pooled = F.max_pool2d(acts, 2 * radius + 1, stride=1, padding=radius)  # (B, C, h, w)
    peaks = (acts >= pooled).flatten(2)
    scored = flat.masked_fill(~peaks, float("-inf"))
    p = min(per_image, flat.shape[2])
    values, idx = scored.topk(p, dim=2, sorted=True)  # (B, C, P)
    if p < per_image:
        pad = per_image - p
        values = torch.cat([values, values.new_full((*values.shape[:2], pad), float("-inf"))], 2)
        idx = torch.cat([idx, idx.new_zeros((*idx.shape[:2], pad))], 2)
    return values, idx


def top_patches(model: nn.Module, data_config, images: Sequence, layers: list[str],
                channels: list[int] | dict[str, list[int]] | None = None, n_channels: int = 8, k: int = 6,
                per_image: int = 1, batch_size: int = 16, stages: dict[str, str] | None = None,
                on_progress: Callable[[int, int], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> UnitPatches:
    """The top-`k` patches of `images` (PIL images or files) for channels of each of `layers` (module names).

    `channels`: the same channel numbers for every layer, one list per layer, or None for each layer's
    `n_channels` most active ones (highest mean over the images of the channel's maximum). At most
    `per_image` patches per image and channel (1: the image's maximum; more for a handful of photos), and
    one at a layer whose field covers the whole input (every place would crop the same whole image).
    `on_progress(done, total)` after every batch; `should_stop()` ends early with the images seen so far.
    """
    start = time.perf_counter()
    if not images:
        raise ValueError("no images to look at: pick a dataset or the bundled photos")
    if k < 1 or per_image < 1 or batch_size < 1:
        raise ValueError("k, per_image and batch_size must be at least 1")
    input_size = tuple(data_config.input_size)
    fields = receptive_fields(model, layers, input_size)
    missing = [n for n in layers if n not in fields]
    if missing:
        raise ViewNotApplicable(f"spatial feature maps traced to the input at {', '.join(missing)}", model)
    radius = {n: max(1, math.ceil(min(fields[n].size) / max(fields[n].jump) / 4)) for n in layers}
    # a field that covers the whole input gives the whole image at every place: one patch per image then
    places = {n: 1 if fields[n].size[0] >= input_size[1] and fields[n].size[1] >= input_size[2] else per_image
              for n in layers}
    peaks, seen, stopped = _scan(model, data_config, images, {n: (places[n], radius[n]) for n in layers},
                                 batch_size, on_progress, should_stop)
    out = UnitPatches([], seen, len(images), stopped)
    crops_of: dict[int, np.ndarray] = {}  # image index -> (H, W, 3) uint8 as the model saw it, shared by layers
    for name in layers if seen else ():
        v, w = peaks[name]  # (N, C, P) each
        chosen = _channels_of(name, v, channels.get(name) if isinstance(channels, dict) else channels, n_channels)
        rows = [_patch_row(fields[name], v[:, c, :], w[:, c, :], k, images, data_config, crops_of) for c in chosen]
        out.layers.append(LayerPatches((stages or {}).get(name, name), name, fields[name], chosen, rows, v.shape[1]))
    out.seconds = time.perf_counter() - start
    return out


def _scan(model: nn.Module, data_config, images: Sequence, layers: dict[str, tuple[int, int]], batch_size: int,
          on_progress, should_stop) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], int, bool]:
    """One eval forward per batch with hooks on `layers` {name: (places, radius)} keeping each channel's
    peaks: ({name: (values (N, C, P), flat indices (N, C, P))}, images seen, whether it was stopped)."""
    values: dict[str, list[torch.Tensor]] = {n: [] for n in layers}  # per batch (B, C, P)
    where: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    param = next(model.parameters(), None)

    def make(name):
        def hook(module, args, output):
            acts = (output[0] if isinstance(output, (tuple, list)) else output).detach().float()
            v, i = _peaks(acts, *layers[name])  # (B, C, P) each
            values[name].append(v.cpu())
            where[name].append(i.cpu())
        return hook

    total, seen = len(images), 0
    for lo in range(0, total, batch_size):
        if should_stop and should_stop():
            break
        x = batch([_load(it) for it in images[lo:lo + batch_size]], data_config)  # (B, 3, H, W)
        x = x.to(param.device) if param is not None else x
        forward_with_hooks(model, [(model.get_submodule(n), make(n)) for n in layers], x)
        seen = min(total, lo + batch_size)
        if on_progress:
            on_progress(seen, total)
    peaks = {n: (torch.cat(values[n]), torch.cat(where[n])) for n in layers} if seen else {}
    return peaks, seen, seen < total


def _channels_of(name: str, v: torch.Tensor, chosen: list[int] | None, n: int) -> list[int]:
    """The channels asked for (checked against the layer's), or the `n` with the highest mean over the images
    of each channel's maximum, from the peaks `v` (N, C, P)."""
    num = v.shape[1]
    if chosen is None:
        strength = v[:, :, 0].mean(0)  # (C,) mean over images of each channel's maximum
        chosen = torch.sort(strength, descending=True, stable=True).indices[:n].tolist()
    bad = [c for c in chosen if not 0 <= int(c) < num]
    if bad:
        raise ValueError(f"{name} has {num} channels (0-{num - 1}); there is no channel {bad[0]}")
    return [int(c) for c in chosen]


def _patch_row(f: ReceptiveField, v: torch.Tensor, w: torch.Tensor, k: int, images: Sequence, data_config,
               crops_of: dict[int, np.ndarray]) -> list[Patch]:
    """One channel's `k` strongest peaks over all images, from its values and flat unit indices (N, P): each
    unit's receptive field cropped from the image as the model saw it (`crops_of` caches those images)."""
    cand = v.reshape(-1)  # (N * P,) image-major
    order = torch.sort(cand, descending=True, stable=True).indices
    row = []
    for o in [int(o) for o in order if torch.isfinite(cand[o])][:k]:
        img, p = divmod(o, v.shape[1])
        unit = divmod(int(w[img, p]), f.grid[1])
        box, clipped = f.box(*unit, *data_config.input_size[1:])
        if img not in crops_of:
            crops_of[img] = _seen(images[img], data_config)
        top, left, bottom, right = box
        row.append(Patch(img, float(cand[o]), unit, box, clipped, crops_of[img][top:bottom, left:right].copy()))
    return row


def _seen(item, data_config) -> np.ndarray:
    """The image exactly as the model saw it: its eval-transformed tensor, de-normalised, (H, W, 3) uint8."""
    x = batch([_load(item)], data_config)[0]  # (3, H, W)
    return (denormalize(x, data_config).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def enlarge(crop: np.ndarray, size: int = 96) -> Image.Image:
    """A patch scaled so its longer side is `size` px (nearest neighbour: a 3x3 field stays nine squares)."""
    img = Image.fromarray(crop)
    scale = size / max(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.NEAREST)


def shrink(result: UnitPatches, size: int = 96) -> UnitPatches:
    """A copy whose crops are at most `size` px on their longer side (what a page keeps per session: a late
    stage's crops are whole 224 px images, about 30 MB for 4 stages x 8 channels x 6 patches)."""
    def small(crop: np.ndarray) -> np.ndarray:
        if max(crop.shape[:2]) <= size:
            return crop
        img = Image.fromarray(crop)
        img.thumbnail((size, size), Image.BILINEAR)
        return np.asarray(img)

    layers = [dataclasses.replace(lp, patches=[[dataclasses.replace(p, crop=small(p.crop)) for p in row]
                                               for row in lp.patches]) for lp in result.layers]
    return dataclasses.replace(result, layers=layers)


def grid(result: UnitPatches, cell: int = 96, labels: list[str] | None = None) -> Image.Image:
    """All rows of patches as one picture (one row per layer and channel, ✂ marking a clipped field), for a
    PNG download or slides."""
    k = max((len(r) for lp in result.layers for r in lp.patches), default=1)
    cells, captions = [], []
    for lp in result.layers:
        for c, row in zip(lp.channels, lp.patches):
            for j in range(k):
                if j < len(row):
                    p = row[j]
                    cells.append(enlarge(p.crop, cell))
                    name = labels[p.image] if labels else f"image {p.image}"
                    head = f"{lp.stage} ch {c}" if j == 0 else f"ch {c}"
                    captions.append(f"{head}: {p.value:.2f}{' ✂' if p.clipped else ''} {name}")
                else:
                    cells.append(Image.new("RGB", (cell, cell), "white"))
                    captions.append("")
    return image_grid(cells, captions, cols=k, cell=cell, max_lines=2)
