"""Freeze strategies side by side: several configurations on the same split and seed, one table.

Runs share the cached features of a frozen prefix they have in common (caching.build's pool), so a
comparison of head-only and partial runs runs the backbone about once.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from vislab import data, evaluation, experiment, freezing, runs
from vislab.training import Event, TrainConfig

COLUMNS = ("run", "strategy", "head", "bn", "lr", "final val acc", "best val acc", "final val loss",
           "train seconds", "trainable params", "BN layers moved")


@dataclass
class Config:
    """One configuration to compare (a row of the table)."""

    name: str
    strategy: str = "head"
    thaw_last: int = 1
    bn: str | None = None  # BN mode of thawed pretrained stages (None: the preset's default)
    head: str = "linear"
    lr: float = 1e-3
    layer_decay: float | None = None
    plan: dict | None = None  # a custom FreezePlan (as a dict) instead of the strategy's preset

    @classmethod
    def preset(cls, strategy: str) -> Config:
        return cls(name=strategy, strategy=strategy, thaw_last=2 if strategy == "partial" else 1)


@dataclass
class Row:
    config: Config
    metrics: list[dict]
    seconds: float
    trainable: int
    bn_moved: int  # BatchNorm layers whose running stats changed during training
    confusion: list[list[int]]
    run_dir: str | None
    cache: list[str]
    model: object = field(default=None, repr=False)  # kept in memory for CAM / feature-map views

    def summary(self) -> dict:
        last = self.metrics[-1] if self.metrics else {}
        return {"run": self.config.name, "strategy": self.config.strategy, "head": self.config.head,
                "bn": self.config.bn or "default", "lr": self.config.lr,
                "final val acc": last.get("val_acc"), "best val acc": max((m["val_acc"] for m in self.metrics),
                                                                         default=None),
                "final val loss": last.get("val_loss"), "train seconds": round(self.seconds, 2),
                "trainable params": self.trainable, "BN layers moved": self.bn_moved}


def _bn_stats(model) -> dict[str, torch.Tensor]:
    return {n: m.running_mean.detach().clone() for n, m in model.named_modules()
            if freezing.is_batchnorm(m) and m.running_mean is not None}


def run(model_name: str, report: data.DataReport, configs: list[Config], epochs: int, out: str | Path | None,
        img_size: int | None = None, batch_size: int = 32, seed: int = 0, per_class: int | None = None,
        on_event: Callable[[str, Event], None] | None = None, stop: threading.Event | None = None,
        engine: str = "auto") -> list[Row]:
    """Train each configuration in turn on the same split and seed; write `comparison.csv/json` to `out`.
    `engine` runs the cached frozen prefixes (vislab.engines: auto, torch or onnxruntime)."""
    names = [data.safe_name(c.name).casefold() for c in configs]
    if len(set(names)) != len(names) or not all(names):
        raise ValueError("each configuration needs its own name (letters or digits; names that differ only "
                         "in case or punctuation count as one)")
    report = data.subset(report, per_class, seed)
    pool: dict = {}
    rows: list[Row] = []
    for config in configs:
        if stop is not None and stop.is_set():
            break
        spec = experiment.Spec(model=model_name, strategy=config.strategy, thaw_last=config.thaw_last, bn=config.bn,
                               head=config.head, weights="random" if config.strategy == "scratch" else "auto",
                               img_size=img_size, per_class=None,
                               train=TrainConfig(epochs=epochs, lr=config.lr, batch_size=batch_size, seed=seed,
                                                 layer_decay=config.layer_decay),
                               engine=engine)
        if config.plan is not None:  # a hand-made plan (the Freeze page's) replaces the preset's phases
            spec.strategy = "custom"
        prepared = experiment.prepare(spec, len(report.classes), plan=config.plan)
        trainable = freezing.report(prepared[0]).trainable_params
        before = _bn_stats(prepared[0])
        start = time.perf_counter()
        result = experiment.train(spec, report, Path(out) / (data.safe_name(config.name) or "run") if out else None,
                                  (lambda e, n=config.name: on_event(n, e)) if on_event else None, stop,
                                  prepared=prepared, cache_pool=pool)
        seconds = time.perf_counter() - start
        after = _bn_stats(result.model)
        moved = sum(1 for n, v in before.items() if not torch.equal(v, after[n].to(v.device)))
        preds = evaluation.predict(result.model.cpu(), result.val_items, result.info.data_config, batch_size)
        cm = evaluation.confusion(preds, len(report.classes)).tolist()
        rows.append(Row(config, result.history.epochs, seconds, trainable, moved, cm,
                        str(result.run_dir) if result.run_dir else None, result.history.cache, result.model))
    if out is not None:
        save(Path(out), model_name, report.classes, rows)
    return rows


def save(folder: Path, model_name: str, classes: list[str], rows: list[Row]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "comparison.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(r.summary() for r in rows)
    (folder / "comparison.json").write_text(json.dumps({
        "model": model_name, "classes": classes,
        "rows": [{"config": asdict(r.config), "metrics": r.metrics, "seconds": r.seconds,
                  "trainable": r.trainable, "bn_moved": r.bn_moved, "confusion": r.confusion,
                  "run_dir": r.run_dir, "cache": r.cache} for r in rows]}, indent=2))


def load(folder: str | Path) -> tuple[str, list[str], list[Row]]:
    """A saved comparison: (model name, classes, rows with their models reloaded from the run folders)."""
    saved = json.loads((Path(folder) / "comparison.json").read_text())
    rows = []
    for r in saved["rows"]:
        model = runs.load(r["run_dir"])[0] if r.get("run_dir") and Path(r["run_dir"]).is_dir() else None
        rows.append(Row(Config(**r["config"]), r["metrics"], r["seconds"], r["trainable"], r["bn_moved"],
                        r["confusion"], r.get("run_dir"), r.get("cache", []), model))
    return saved["model"], saved["classes"], rows


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [f"{v:.3f}" if isinstance(v, float) and not isinstance(v, bool) else str(v)
                 for v in r.summary().values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
