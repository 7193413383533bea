"""Run folders: everything needed to rebuild a trained model exactly, and its metrics.

    <run>/config.json        model name, head, classes count, data config, freeze plans, training config
    <run>/metrics.json       one record per epoch: train_loss, train_acc, val_loss, val_acc, seconds, ...
    <run>/classes.json       class names, in label order
    <run>/model.safetensors  the full state_dict, with the model's own key names
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from vislab import freezing
from vislab.freezing import FreezePlan
from vislab.models import DataConfig, build_architecture, fit_input_size
from vislab.heads import swap_head

FILES = ("config.json", "metrics.json", "classes.json", "model.safetensors")


@dataclass
class Run:
    path: Path
    config: dict
    metrics: list[dict]
    classes: list[str]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def data_config(self) -> DataConfig:
        return DataConfig.from_dict(self.config["data_config"])

    @property
    def best_val_acc(self) -> float | None:
        accs = [m["val_acc"] for m in self.metrics]
        return max(accs) if accs else None


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def save(folder: str | Path, model: nn.Module, config: dict, metrics: list[dict], classes: list[str]) -> Path:
    """Write the four run files; the model state last, so a folder with it is complete."""
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {**config, "saved": time.strftime("%Y-%m-%d %H:%M:%S")}
    _write_json(folder / "config.json", config)
    _write_json(folder / "metrics.json", metrics)
    _write_json(folder / "classes.json", classes)
    save_model(model, str(folder / "model.safetensors"))
    return folder


def save_split(folder: str | Path, train: list[tuple[str, int]], val: list[tuple[str, int]]) -> None:
    """`split.json`: the exact train / validation files, so a reopened run can be evaluated again."""
    _write_json(Path(folder) / "split.json", {"train": train, "val": val})


def load_split(folder: str | Path) -> tuple[list, list] | None:
    try:
        d = json.loads((Path(folder) / "split.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return [tuple(i) for i in d["train"]], [tuple(i) for i in d["val"]]


def rebuild(config: dict, classes: list[str]) -> nn.Module:
    """The run's architecture (random weights), with its head and its last freeze plan applied."""
    model = build_architecture(config["model"])
    size = (config.get("data_config") or {}).get("input_size")
    if size:  # a ViT trained at another size has resampled position embeddings
        fit_input_size(model, config["model"], int(size[-1]), check=False)
    swap_head(model, len(classes), config["head_kind"])
    plans = config.get("plans") or []
    if plans:
        freezing.apply(model, FreezePlan.from_dict(plans[-1]), strict=False)
    return model


def load(folder: str | Path) -> tuple[nn.Module, Run]:
    """Rebuild the identical model of a run folder."""
    from safetensors.torch import load_model

    folder = Path(folder)
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete run: missing {', '.join(missing)}")
    config = json.loads((folder / "config.json").read_text())
    classes = json.loads((folder / "classes.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    model = rebuild(config, classes)
    load_model(model, str(folder / "model.safetensors"), strict=True)
    model.eval()
    return model, Run(folder, config, metrics, classes)


def list_runs(root: str | Path) -> list[Run]:
    """Complete runs under `root`, newest first."""
    root = Path(root)
    runs = []
    for folder in sorted(root.glob("*/"), key=lambda p: p.stat().st_mtime, reverse=True) if root.is_dir() else []:
        if all((folder / f).is_file() for f in FILES):
            try:
                runs.append(Run(folder, json.loads((folder / "config.json").read_text()),
                                json.loads((folder / "metrics.json").read_text()),
                                json.loads((folder / "classes.json").read_text())))
            except (json.JSONDecodeError, OSError):
                continue
    return runs
