"""Image loading and the model's transforms (from its data config), plus a few augmentations to toggle."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T

from vislab.data.config import DataConfig, resize_for

_INTERP = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
    "lanczos": T.InterpolationMode.LANCZOS,
}


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as upright 8-bit RGB: EXIF rotation applied, alpha over white, 16-bit scaled, CMYK converted."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(arr)
        lo, hi = (float(arr[finite].min()), float(arr[finite].max())) if finite.any() else (0.0, 0.0)
        arr = np.where(finite, arr, np.where(arr > 0, hi, lo))  # +inf as the brightest pixel, -inf/NaN darkest
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open an image file fully (errors surface here, not later in a DataLoader worker)."""
    with Image.open(path) as img:
        img.seek(0)  # the first frame of an animated GIF / multi-page TIFF
        img.load()
        return to_rgb(img)


@dataclass
class Augment:
    """Training-time augmentations; all off gives the deterministic eval transform."""

    crop: bool = False  # random resized crop (scale 0.6-1) instead of resize + center crop
    hflip: bool = False  # horizontal flip, p=0.5
    vflip: bool = False  # vertical flip, p=0.5 (fine for textures, wrong for most photos)
    rotate: bool = False  # random rotation up to 15 degrees
    color: bool = False  # brightness / contrast / saturation jitter 0.2
    # 0: a new random view of each image every epoch (the full loop runs); K > 0: K fixed random views per
    # image, epoch e using view e mod K, so a frozen prefix can be cached on K x the images (training/feature_cache.py)
    views: int = 0

    @property
    def any(self) -> bool:
        return any(v for k, v in asdict(self).items() if k != "views")

    def to_dict(self) -> dict:
        return asdict(self)


def eval_transform(cfg: DataConfig) -> T.Compose:
    """timm's eval transform for this config: resize the short side to size/crop_pct, center-crop, normalise."""
    from timm.data import create_transform

    return create_transform(input_size=cfg.input_size, interpolation=cfg.interpolation, mean=cfg.mean,
                            std=cfg.std, crop_pct=cfg.crop_pct, is_training=False)


def train_transform(cfg: DataConfig, augment: Augment | None) -> T.Compose:
    if augment is None or not augment.any:
        return eval_transform(cfg)
    interp = _INTERP.get(cfg.interpolation, T.InterpolationMode.BILINEAR)
    size = cfg.size
    steps = ([T.RandomResizedCrop(size, scale=(0.6, 1.0), interpolation=interp)] if augment.crop
             else [T.Resize(resize_for(cfg), interpolation=interp), T.CenterCrop(size)])
    if augment.hflip:
        steps.append(T.RandomHorizontalFlip())
    if augment.vflip:
        steps.append(T.RandomVerticalFlip())
    if augment.rotate:
        steps.append(T.RandomRotation(15, interpolation=interp))
    if augment.color:
        steps.append(T.ColorJitter(0.2, 0.2, 0.2))
    steps += [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]
    return T.Compose(steps)


def crop_seen(img: Image.Image, cfg: DataConfig) -> Image.Image:
    """The exact square the model sees (resize + center crop), as a picture."""
    interp = _INTERP.get(cfg.interpolation, T.InterpolationMode.BILINEAR)
    return T.CenterCrop(cfg.size)(T.Resize(resize_for(cfg), interpolation=interp)(img))


def denormalize(x: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """(C, H, W) normalised tensor -> (C, H, W) in [0, 1] for display."""
    mean = torch.tensor(cfg.mean, dtype=x.dtype).view(-1, 1, 1)
    std = torch.tensor(cfg.std, dtype=x.dtype).view(-1, 1, 1)
    return (x * std + mean).clamp(0, 1)
