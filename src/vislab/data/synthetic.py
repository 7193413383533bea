"""Image datasets made on the spot, for tests and the benchmarks: no download, a few KB.

- `make_synthetic`: stripes at one angle per class; a model tells the classes apart within an epoch.
- `make_objects`: one small object (disc, square, triangle) at a random, recorded place on clutter, so a
  test knows where a heatmap should point (`boxes.json`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_synthetic(root: str | Path, classes: int = 3, per_class: int = 8, size: int = 64, seed: int = 0) -> Path:
    """A tiny learnable dataset: each class is stripes at its own angle, with noise and colour jitter."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        angle = np.pi * c / classes
        for i in range(per_class):
            phase = rng.uniform(0, 2 * np.pi)
            wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 0.5 + phase)  # (H, W)
            tint = rng.uniform(0.6, 1.0, size=3)
            img = (wave[..., None] * 0.5 + 0.5) * tint + rng.normal(0, 0.08, (size, size, 3))  # (H, W, 3)
            Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(folder / f"img_{i:03d}.png")
    return root


OBJECTS = ("disc", "square", "triangle")  # the class names of `make_objects`, one shape and colour each
OBJECT_COLOURS = {"disc": (220, 30, 30), "square": (30, 70, 230), "triangle": (30, 190, 50)}  # saturated RGB
BOXES = "boxes.json"  # {"size": S, "classes": [...], "boxes": {"<class>/<file>": [x0, y0, x1, y1]}}


def _clutter(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted, cluttered background (H, W, 3) in [0, 1]: noise at four scales (from blotches to grain) in
    low-saturation tints, crossed by a few grey-brown strokes and ellipses. Drawn the same way for every
    class, so nothing in it tells the classes apart."""
    from PIL import ImageDraw

    img = np.zeros((size, size, 3), np.float32)
    for cells, weight in ((3, 0.45), (7, 0.3), (17, 0.17), (size // 2, 0.08)):
        grid = rng.random((cells, cells, 3)).astype(np.float32)
        grey = grid.mean(2, keepdims=True)
        grid = grey + 0.3 * (grid - grey)  # low saturation: the objects' colours stand out
        up = np.stack([np.asarray(Image.fromarray(grid[..., c]).resize((size, size), Image.BICUBIC))
                       for c in range(3)], -1)  # (H, W, 3)
        img += weight * up
    pic = Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    for _ in range(int(rng.integers(3, 7))):  # distractors: lines and rings in muted greys and browns
        tone = rng.uniform(0.2, 0.8)
        colour = tuple(int(255 * tone * t) for t in (1.0, rng.uniform(0.8, 1.0), rng.uniform(0.6, 0.9)))
        a, b = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
        if rng.random() < 0.5:
            draw.line([tuple(a), tuple(b)], fill=colour, width=int(rng.integers(1, max(2, size // 32))))
        else:
            draw.ellipse([tuple(np.minimum(a, b)), tuple(np.maximum(a, b))], outline=colour,
                         width=int(rng.integers(1, max(2, size // 40))))
    return np.asarray(pic, np.float32) / 255 + rng.normal(0, 0.03, (size, size, 3)).astype(np.float32)


def _paste(img: Image.Image, shape: str, box: tuple[int, int, int, int]) -> None:
    from PIL import ImageDraw

    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box  # inclusive pixel corners
    colour = OBJECT_COLOURS[shape]
    if shape == "disc":
        draw.ellipse([x0, y0, x1, y1], fill=colour)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=colour)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=colour)


def make_objects(root: str | Path, classes: int = 3, per_class: int = 30, size: int = 128, seed: int = 0,
                 object_frac: float = 0.12, margin: float = 0.1) -> Path:
    """Images whose class is decided by one small object at a known place, to test whether a heatmap
    points at what the model uses: a red disc, a blue square or a green triangle (`OBJECTS[:classes]`),
    `object_frac` of the side (± 20 %), pasted at a random place at least `margin` of the side from each
    edge (so a center crop of 87.5 % keeps it whole) on a cluttered background drawn the same way for every
    class (`_clutter`). Each object's bounding box (x0, y0, x1, y1: inclusive pixels) is written to
    `root/boxes.json` (keys "<class>/<file>"), which the dataset scan ignores (no image). Deterministic by
    `seed`; a different seed gives a held-out set of the same distribution."""
    if not 1 <= classes <= len(OBJECTS):
        raise ValueError(f"classes must be 1 to {len(OBJECTS)}")
    import json

    root = Path(root)
    rng = np.random.default_rng(seed)
    boxes: dict[str, list[int]] = {}
    for shape in OBJECTS[:classes]:
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = Image.fromarray((_clutter(rng, size).clip(0, 1) * 255).astype(np.uint8))
            side = max(3, int(round(size * object_frac * rng.uniform(0.8, 1.2))))
            lo, hi = int(np.ceil(size * margin)), int(size * (1 - margin)) - side
            x0, y0 = (int(v) for v in rng.integers(lo, max(lo, hi) + 1, 2))
            box = (x0, y0, x0 + side - 1, y0 + side - 1)
            _paste(img, shape, box)
            img.save(folder / f"img_{i:03d}.png")
            boxes[f"{shape}/img_{i:03d}.png"] = list(box)
    (root / BOXES).write_text(json.dumps({"size": size, "classes": list(OBJECTS[:classes]), "boxes": boxes},
                                         indent=1))
    return root
