"""A model's data config: how images must be prepared for it (timm's `resolve_data_config` result), and the
short-side resize before its centre crop."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class DataConfig:
    """How images must be prepared for a model (what timm calls the data config)."""

    input_size: tuple[int, int, int] = (3, 224, 224)  # (C, H, W) the model sees
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    crop_pct: float = 0.875  # resize the short side to size / crop_pct, then center-crop to size

    @property
    def size(self) -> int:
        return self.input_size[-1]

    def with_size(self, size: int | None) -> DataConfig:
        if not size:
            return self
        return DataConfig((self.input_size[0], size, size), self.mean, self.std, self.interpolation, self.crop_pct)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DataConfig:
        d = dict(d)
        d["input_size"] = tuple(d["input_size"])
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


def resize_for(cfg: DataConfig) -> int:
    """Short-side resize before the center crop, as timm computes it."""
    return int(math.floor(cfg.size / cfg.crop_pct))
