"""Run folders: everything needed to rebuild a trained model exactly, and its metrics.

    <run>/config.json        model name, head, classes count, data config, freeze plans, training config
    <run>/metrics.json       one record per epoch: train_loss, train_acc, val_loss, val_acc, seconds, ...
    <run>/classes.json       class names, in label order
    <run>/model.safetensors  the full state_dict, with the model's own key names
    <run>/split.json         the exact train / validation files
    <run>/predictions.json   the validation predictions of the kept weights (confusion matrix, top losses)
    <run>/checkpoint/        while training: the best epoch so far, itself a complete run folder

The four files are written one by one, each atomically, the model last: a folder with `model.safetensors` is
complete. A kill mid-training leaves `checkpoint/` (the best epoch so far), which `load` opens and
`vislab train --resume` continues.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.nn as nn

from vislab import _fileio as fileio
from vislab.models import freezing
from vislab.models.freezing import FreezePlan
from vislab.data.config import DataConfig
from vislab.models.factory import create_model
from vislab.training.evaluation import Predictions

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


CHECKPOINT = "checkpoint"


def _write_json(path: Path, obj) -> None:
    fileio.write_json(path, obj)


def save(folder: str | Path, model: nn.Module | dict, config: dict, metrics: list[dict],
         classes: list[str]) -> Path:
    """Write the four run files; the model state last (a model, or a state_dict), so a folder with it is
    complete, and each file atomically, so no reader or kill ever sees half of one."""
    from safetensors.torch import save_file, save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {**config, "saved": time.strftime("%Y-%m-%d %H:%M:%S")}
    _write_json(folder / "config.json", config)
    _write_json(folder / "metrics.json", metrics)
    _write_json(folder / "classes.json", classes)
    tmp = folder / ".model.safetensors.tmp"
    if isinstance(model, dict):
        save_file({k: v.contiguous() for k, v in model.items()}, str(tmp))
    else:
        save_model(model, str(tmp))
    os.replace(tmp, folder / "model.safetensors")
    return folder


def save_checkpoint(folder: str | Path, state: dict, config: dict, metrics: list[dict], classes: list[str]) -> Path:
    """The best epoch so far as `folder/checkpoint/`, a complete run folder, replaced as a whole: it is written
    beside, then swapped in by renames, so a kill at any moment leaves the old checkpoint or the new one."""
    folder = Path(folder)
    new, old, final = folder / f".{CHECKPOINT}.new", folder / f".{CHECKPOINT}.old", folder / CHECKPOINT
    shutil.rmtree(new, ignore_errors=True)
    save(new, state, config, metrics, classes)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def complete(folder: str | Path) -> bool:
    return all((Path(folder) / f).is_file() for f in FILES)


def checkpoint_of(folder: str | Path) -> Path | None:
    """The complete checkpoint of an unfinished run (the latest one, even if a swap was cut short)."""
    for name in (CHECKPOINT, f".{CHECKPOINT}.old"):
        if complete(Path(folder) / name):
            return Path(folder) / name
    return None


def _readable(folder: Path) -> Path:
    """The folder whose files describe the run: itself when complete, else its checkpoint if any."""
    folder = Path(folder)
    return folder if complete(folder) else (checkpoint_of(folder) or folder)


def read_config(folder: str | Path) -> dict:
    """A run's config.json (an interrupted run's checkpoint config); {} when there is none yet."""
    return fileio.read_json(_readable(folder) / "config.json", {}) or {}


def read_metrics(folder: str | Path) -> list[dict]:
    try:
        return fileio.read_json(_readable(folder) / "metrics.json", []) or []
    except ValueError:
        return []


def save_predictions(folder: str | Path, pred) -> None:
    """`predictions.json`: an evaluation.Predictions (paths, labels, probabilities, losses)."""
    fileio.write_json(Path(folder) / "predictions.json", {
        "paths": list(pred.paths), "labels": np.asarray(pred.labels).tolist(),
        "probs": np.asarray(pred.probs, dtype=float).round(6).tolist(),
        "losses": np.asarray(pred.losses, dtype=float).round(6).tolist()}, indent=None)


def load_predictions(folder: str | Path):
    """The saved evaluation.Predictions of a run, or None."""
    try:
        d = fileio.read_json(Path(folder) / "predictions.json")
    except (ValueError, OSError):
        return None
    if not d:
        return None
    k = len(d["probs"][0]) if d["probs"] else 0
    return Predictions(d["paths"], np.asarray(d["labels"], dtype=int),
                       np.asarray(d["probs"], dtype=np.float32).reshape(-1, k),
                       np.asarray(d["losses"], dtype=np.float32))


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
    """The run's architecture (random weights, for its saved state to fill), built as a new run's model is
    (`create_model`: head, then input size), with its last freeze plan applied."""
    size = (config.get("data_config") or {}).get("input_size")
    model, _ = create_model(config["model"], len(classes), config["head_kind"], "random",
                            img_size=int(size[-1]) if size else None, check_size=False)
    plans = config.get("plans") or []
    if plans:
        freezing.apply(model, FreezePlan.from_dict(plans[-1]), strict=False)
    return model


def load(folder: str | Path) -> tuple[nn.Module, Run]:
    """Rebuild the identical model of a run folder (of an interrupted run: its best checkpoint)."""
    from safetensors.torch import load_model

    folder = Path(folder)
    if not complete(folder) and checkpoint_of(folder) is not None:
        folder = checkpoint_of(folder)
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

