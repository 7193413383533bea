"""The look-inside pages' maps for a list of images, as files (`vislab explain` writes them; workshop
preparation). For each image, a PNG (the overlay, as the page draws it) and an array:

    cam, gradcam, gradcampp, layercam   the CAM page's map for the predicted class (float32 in [0, 1])
    attention                           the Attention page's class-token attention of the last block, heads
                                        averaged (a ViT's, or a CNN's attention head's)
    rollout                             its attention rollout (mean over heads; a ViT's weakest 90 % discarded)
    features                            the Feature-maps page's most active channel at its default layer
                                        (the PNG: the 16 most active channels, as the page shows them)
    se                                  the SE page's gates, blocks x channels (NaN where a block has fewer)

Maps are at the image's own resolution (H x W of the file): the model saw a resized center crop, so the
map fills that square and is 0 outside it. Every map comes from the same library call the page makes
(`cam.explain`, `attention.view` with its `cls` / `rollout`, `se.se_gates`, `features.activations`):
the attention views read a ViT's blocks and a CNN's attention head alike. `compute` decides and computes
everything before `write` writes a file; a view that does not apply raises ExplainError.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image

from vislab import _fileio as fileio
from vislab.data.config import resize_for
from vislab._modes import inference
from vislab.views import attention, cam, faithfulness, features, sanity as sanity_check, se, base as views

CAM_VIEWS = {"cam": "CAM (classic)", "gradcam": "GradCAM", "gradcampp": "GradCAM++", "layercam": "LayerCAM"}
VIEWS = (*CAM_VIEWS, "attention", "rollout", "se", "features")
FEATURE_CHANNELS = 16  # the Feature-maps page's default number of channels
ROLLOUT_DISCARD = 0.9  # the ViT page's default


class ExplainError(ValueError):
    """A view, layer or image that cannot be explained; the message says what to change."""


@dataclass
class Loaded:
    model: nn.Module
    data_config: object  # data.config.DataConfig
    classes: list[str]
    name: str  # the architecture's name


@dataclass
class Output:
    stem: str
    png: Image.Image
    array: np.ndarray  # float32
    crop_map: np.ndarray | None = None  # (S, S) in [0, 1]: the map on the crop the model saw (for --scores)


def to_image(m: np.ndarray, size: tuple[int, int], data_config) -> np.ndarray:
    """A map over the model's input square (S, S) laid back onto the original image (W, H) = `size`: the
    square is the resized center crop the eval transform took, and the map is 0 where the model saw nothing.
    (H, W) float32 in [0, 1]."""
    w, h = size
    s, r = data_config.size, resize_for(data_config)
    rw, rh = (r, int(r * h / w)) if w <= h else (int(r * w / h), r)  # torchvision's short-side resize
    top, left = int(round((rh - s) / 2.0)), int(round((rw - s) / 2.0))  # its center crop
    u = (torch.arange(w, dtype=torch.float64) + 0.5) * rw / w - left  # crop pixels of each column's centre
    v = (torch.arange(h, dtype=torch.float64) + 0.5) * rh / h - top
    gx, gy = (2 * u / s - 1).float(), (2 * v / s - 1).float()
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]  # (1, H, W, 2) as (x, y)
    t = torch.as_tensor(np.asarray(m, dtype=np.float32))[None, None]  # (1, 1, S, S)
    out = F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0]  # (H, W)
    inside = ((v >= 0) & (v <= s))[:, None] & ((u >= 0) & (u <= s))[None, :]
    return torch.where(inside, out, torch.zeros(())).clamp(0, 1).numpy().astype(np.float32)


def overlay(img: Image.Image, m: np.ndarray, colormap: str = "jet", opacity: float = 0.5) -> Image.Image:
    """The map in a colour scale over the image, as the pages draw it (Jet at 0.5 for CAMs, Inferno at 0.6
    for attention); outside the square the model saw, the image is dimmed."""
    base = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
    colour = colormaps[colormap](np.asarray(m))[..., :3].astype(np.float32)
    blend = (1 - opacity) * base + opacity * colour
    seen = np.asarray(m) > 0
    rows, cols = seen.any(1), seen.any(0)
    mask = rows[:, None] & cols[None, :]
    out = np.where(mask[..., None], blend, 0.45 * base)
    return Image.fromarray((out * 255).round().astype(np.uint8))


def _figure_png(draw) -> Image.Image:
    import matplotlib  # pyplot only under the Agg backend, chosen before pyplot loads (no display here)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw(plt)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _se_png(matrix: np.ndarray, blocks: list[str], title: str) -> Image.Image:
    def draw(plt):
        fig, ax = plt.subplots(figsize=(10, 1.2 + 0.22 * len(blocks)))
        cmap = plt.get_cmap("viridis").with_extremes(bad="#cccccc")
        im = ax.imshow(np.ma.masked_invalid(matrix), aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks(range(len(blocks)), blocks, fontsize=7)
        ax.set_xlabel("channel")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, label="gate")
        return fig
    return _figure_png(draw)


def _maps_png(maps: np.ndarray, titles: list[str], title: str, cols: int = 8) -> Image.Image:
    def draw(plt):
        rows = -(-len(maps) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.5 * rows + 0.4), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, m, t in zip(axes.flat, maps, titles):
            ax.imshow(m, cmap="viridis", interpolation="bilinear")
            ax.set_title(t, fontsize=8)
        fig.suptitle(title, fontsize=9)
        return fig
    return _figure_png(draw)


def compute(loaded: Loaded, view: str, images: list[tuple[str, Image.Image]], layer: str | None = None) -> list[Output]:
    """Each image's PNG and array for `view`; a view that does not apply raises ExplainError."""
    if view not in VIEWS:
        raise ExplainError(f"unknown view '{view}': choose from {', '.join(VIEWS)}")
    model, cfg = loaded.model, loaded.data_config
    pics = [img for _, img in images]
    x = views.batch(pics, cfg)  # (B, 3, S, S)
    size = (cfg.size, cfg.size)
    out: list[Output] = []
    try:
        if view in CAM_VIEWS:
            default = cam.default_layer(model, loaded.name or None)
            target = layer or default
            if layer is not None and layer not in dict(model.named_modules()):
                raise ExplainError(f"--layer {layer}: the model has no such module (e.g. {default})")
            found = cam.explain(model, x, loaded.classes, [CAM_VIEWS[view]], [target], classic_layer=default)
            if not found.results:
                raise ExplainError(f"{view}: {found.errors[0][1] if found.errors else 'no map'}")
            maps = found.results[0].maps  # (B, S, S) in [0, 1]
            for b, (stem, img) in enumerate(images):
                full = to_image(maps[b], img.size, cfg)
                out.append(Output(stem, overlay(img, full, "jet", 0.5), full, maps[b]))
        elif view in ("attention", "rollout"):
            if not attention.has_attention(model):
                raise views.ViewNotApplicable("self-attention layers", model, attention.ATTENTION_MODELS,
                                              attention.why_not(model))
            found = attention.view(model, x)  # a ViT's blocks, or a CNN's attention head: per block (B, h, T, T)
            discard = 0.0 if found.hybrid else ROLLOUT_DISCARD  # the page's defaults
            for b, (stem, img) in enumerate(images):
                if view == "attention":
                    m = found.cls(b)[-1].mean(0)  # (gh, gw): the last block, heads averaged
                else:
                    m = found.rollout("mean", discard, image=b)
                crop = views.fit_map(m, size)
                out.append(Output(stem, overlay(img, to_image(crop, img.size, cfg), "inferno", 0.6),
                                  to_image(crop, img.size, cfg), crop))
        elif view == "se":
            gates = se.se_gates(model, x)
            for b, (stem, img) in enumerate(images):
                matrix = gates.matrix(b).astype(np.float32)  # (blocks, max C)
                out.append(Output(stem, _se_png(matrix, gates.blocks, f"SE gates · {stem}"), matrix))
        else:  # features
            names = features.conv_layers(model)
            if not names:
                raise views.ViewNotApplicable("convolution layers with spatial maps", model, ("resnet18",))
            target = layer or names[len(names) // 2]  # the page's default layer
            if target not in names:
                raise ExplainError(f"--layer {target}: not a layer with feature maps (e.g. {names[len(names) // 2]})")
            acts = features.activations(model, target, x)  # (B, C, h, w)
            for b, (stem, img) in enumerate(images):
                top = features.top_channels(acts[b], FEATURE_CHANNELS)
                png = _maps_png(acts[b][top].numpy(), [f"ch {c}" for c in top],
                                f"{target}: the {len(top)} most active channels · {stem}")
                crop = views.fit_map(acts[b][top[0]].numpy(), size)
                out.append(Output(stem, png, to_image(crop, img.size, cfg), crop))
    except views.ViewNotApplicable as exc:
        raise ExplainError(f"--view {view} does not apply to {loaded.name or type(model).__name__}: {exc}") from None
    return out


SCORE_COLUMNS = ("image", "view", "target", "deletion_auc", "insertion_auc", "random_deletion_auc",
                 "random_insertion_auc", "centre_deletion_auc", "centre_insertion_auc", "fill", "steps")


def scores(loaded: Loaded, view: str, images: list[tuple[str, Image.Image]], outputs: list[Output]) -> list[dict]:
    """Deletion and insertion AUC of each output's map for the model's predicted class, beside a random map's
    and a centred blob's (views.faithfulness); one row per image. The SE gates are no map: refused."""
    if any(o.crop_map is None for o in outputs):
        raise ExplainError(f"--scores needs a map over the image; --view {view} has none")
    x = views.batch([img for _, img in images], loaded.data_config)  # (B, 3, S, S)
    with inference(loaded.model):
        targets = loaded.model(x).argmax(1).tolist()
    rows = []
    for b, o in enumerate(outputs):
        found = faithfulness.with_baselines(loaded.model, x[b:b + 1], o.crop_map, targets[b])
        rows.append({"image": o.stem, "view": view, "target": loaded.classes[targets[b]]
                     if targets[b] < len(loaded.classes) else targets[b],
                     **{f"{prefix}{kind}_auc": round(getattr(found[name], f"{kind}_auc"), 5)
                        for name, prefix in (("map", ""), ("random", "random_"), ("centre", "centre_"))
                        for kind in ("deletion", "insertion")},
                     "fill": faithfulness.FILL, "steps": faithfulness.STEPS})
    return rows


def scores_csv(rows: list[dict]) -> str:
    return fileio.csv_text(rows, SCORE_COLUMNS)


SANITY_COLUMNS = ("image", "view", "target", "step", "step_name", "stage", "layers_randomised", "modules_randomised",
                  "spearman", "ssim")


def sanity(loaded: Loaded, view: str, images: list[tuple[str, Image.Image]], layer: str | None = None,
           seed: int = 0) -> tuple[list[dict], dict[str, bytes]]:
    """The cascading-randomisation check (views.sanity) of a CAM view's map for the predicted class, on a copy
    of the model, at the layer `compute` used: one row per image and step (step 0: the original map), and
    each image's strip as PNG bytes by file name (`<stem>_<view>_sanity.png`). A view that is no CAM is
    refused."""
    if view not in CAM_VIEWS:
        raise ExplainError(f"--sanity checks a class activation map; --view {view} is not one "
                           f"(choose {', '.join(CAM_VIEWS)})")
    model, cfg = loaded.model, loaded.data_config
    x = views.batch([img for _, img in images], cfg)  # (B, 3, S, S)
    default = cam.default_layer(model, loaded.name or None)
    method = CAM_VIEWS[view]
    try:
        found = sanity_check.check(model, x, method, default if method == cam.CLASSIC else (layer or default))
    except views.ViewNotApplicable as exc:
        raise ExplainError(f"--view {view} does not apply to {loaded.name or type(model).__name__}: {exc}") from None
    pictures = sanity_check.crops(x, cfg.mean, cfg.std)  # (B, S, S, 3)
    with inference(model):
        targets = model(x).argmax(1).tolist()
    rows, strips = [], {}
    for (stem, _), steps, picture, target in zip(images, found, pictures, targets):
        strips[f"{stem}_{view}_sanity.png"] = sanity_check.strip_png(steps, picture, method)
        rows += [{"image": stem, "view": view, "target": loaded.classes[target] if target < len(loaded.classes)
                  else target, "step": s.step, "step_name": s.name, "stage": s.stage,
                  "layers_randomised": s.layers_randomised, "modules_randomised": s.modules_randomised,
                  "spearman": round(s.spearman, 5), "ssim": round(s.ssim, 5)} for s in steps]
    return rows, strips


def sanity_csv(rows: list[dict]) -> str:
    return fileio.csv_text(rows, SANITY_COLUMNS)


def write(outputs: list[Output], view: str, folder: Path) -> list[Path]:
    """`<stem>_<view>.png` and `.npy` for each output, each written atomically."""
    written = []
    for o in outputs:
        png = io.BytesIO()
        o.png.save(png, format="PNG")
        arr = io.BytesIO()
        np.save(arr, np.asarray(o.array, dtype=np.float32))
        written.append(fileio.write_bytes(folder / f"{o.stem}_{view}.png", png.getvalue()))
        written.append(fileio.write_bytes(folder / f"{o.stem}_{view}.npy", arr.getvalue()))
    return written
