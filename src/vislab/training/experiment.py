"""A whole fine-tuning job from one spec: model, freeze plans, data, training, and the run folder.

`prepare` is the one job builder: it makes the model (with `models.factory.create_model`, the one model
builder) and its phases for the CLI, the Train page's working model, the background jobs and compare.
`train` runs what it built and writes the run folder.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from vislab import _fileio as fileio
from vislab.data import folders as data, datasets
from vislab.models import catalog, freezing, factory as models
from vislab.models.weights import WeightsStatus
from vislab.training import engines, evaluation, runs, loop as training
from vislab.training.prefix import find_prefix, reproduces
from vislab.training.loop import Event, TrainConfig
from vislab.data.transforms import Augment, eval_transform, train_transform

INTERRUPTED_NOTE = "the run was interrupted: continuing from its best epoch"  # + " (N)"; a resumed run's note


@dataclass
class Spec:
    model: str = catalog.DEFAULT_MODEL
    strategy: str = "head"  # head | partial | surgical | full | two-phase | scratch
    thaw_last: int = 1  # partial: how many of the last stages train with the head; surgical: the one that does
    bn: str | None = None  # BN mode of thawed pretrained stages; None: eval (train for scratch)
    head: str = "linear"  # linear | mlp | attention (heads.HEAD_KINDS)
    weights: str = "pretrained"  # pretrained | auto | random (scratch always random)
    img_size: int | None = None  # None: the model's own input size
    val_frac: float = 0.2
    train_fraction: float = 1.0  # train on this stratified, nested share of the training split (the study's axis)
    per_class: int | None = None  # use at most this many images per class
    augment: Augment = field(default_factory=Augment)
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: str = "auto"  # what runs the cached frozen prefix: auto (the faster that agrees) | torch | onnxruntime

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Spec:
        d = dict(d)
        return cls(**{**d, "augment": Augment(**d.get("augment", {})), "train": TrainConfig(**d.get("train", {}))})


@dataclass
class Result:
    model: nn.Module
    info: models.ModelInfo
    history: training.History
    run_dir: Path | None
    classes: list[str]
    val_items: list[tuple[str, int]]


def prepare(spec: Spec, num_classes: int, base: nn.Module | None = None, info: models.ModelInfo | None = None,
            plan: freezing.FreezePlan | dict | None = None):
    """The model to train and its phases. `base` (a cached pretrained model with its original head) is copied.

    `plan` (a hand-made FreezePlan, the Freeze page's) replaces the preset's plan of the last phase: a
    "custom" strategy trains that plan alone; "two-phase" trains the head, then that plan.
    """
    training.seed_everything(spec.train.seed)  # the new head's (and scratch model's) init is part of the run
    scratch = spec.strategy == "scratch"  # random weights: the cached pretrained base is not used
    cached = (base, info) if base is not None and info is not None and not scratch else None
    model, info = models.create_model(spec.model, num_classes, spec.head, "random" if scratch else spec.weights,
                                      spec.img_size, base=cached)
    if isinstance(plan, dict):
        plan = freezing.FreezePlan.from_dict(plan)
    if spec.strategy in freezing.STRATEGIES:
        plans = freezing.preset(model, spec.strategy, spec.thaw_last, spec.bn)
    elif plan is None:
        raise ValueError(f"strategy '{spec.strategy}' needs a freeze plan (one of {', '.join(freezing.STRATEGIES)} "
                         "builds its own)")
    else:
        plans = [plan]
    if plan is not None:
        plans[-1] = plan
    phases = training.phases_for(spec.strategy, plans, spec.train.epochs, spec.train.lr,
                                 spec.train.phase2_lr_factor)
    freezing.apply(model, phases[0].plan)  # the model shows what the first phase will train
    return model, info, phases


def train(
    spec: Spec,
    report: data.DataReport,
    out: str | Path | None,
    on_event: Callable[[Event], None] | None = None,
    stop: threading.Event | None = None,
    base: nn.Module | None = None,
    base_info: models.ModelInfo | None = None,
    prepared: tuple | None = None,
    cache_pool: dict | None = None,
    checkpoints: bool = False,
    predictions: bool = False,
) -> Result:
    """Train per `spec`; `prepared` = (model, info, phases) trains that model as is (the UI's own plan).

    With `checkpoints`, `out/checkpoint/` keeps the best epoch so far (an interrupted run is not lost); with
    `predictions`, the run folder also gets the validation predictions of the kept weights."""
    if not report.usable:
        raise data.DataError("; ".join(report.errors))
    if spec.engine not in engines.ENGINES:
        raise engines.EngineError(f"unknown engine '{spec.engine}': use {', '.join(engines.ENGINES)}")
    report = data.subset(report, spec.per_class, spec.train.seed)
    if not report.usable:
        raise data.DataError("; ".join(report.errors))
    model, info, phases = prepared or prepare(spec, len(report.classes), base, base_info)
    if prepared is not None:  # the UI's own model: make sure it takes the chosen size (a ViT resamples)
        models.fit_input_size(model, spec.model, info.data_config.size)
    train_items, val_items = data.split(report.items, spec.val_frac, spec.train.seed, report.fixed_val)
    train_items = data.fraction_of(train_items, spec.train_fraction, spec.train.seed)  # val stays whole
    cfg = info.data_config
    augment = spec.augment
    if augment.any and augment.views > 0:  # K fixed views: the frozen prefix can still be cached
        train_ds = datasets.AugmentedViews(train_items, train_transform(cfg, augment), augment.views, spec.train.seed)
    else:
        train_ds = datasets.ImageDataset(train_items, train_transform(cfg, augment))
    val_ds = datasets.ImageDataset(val_items, eval_transform(cfg))
    device = training.pick_device(spec.train.device)
    train_loader, val_loader = training.make_loaders(train_ds, val_ds, spec.train, device)
    fresh_views = augment.any and augment.views == 0  # new random pixels every epoch: nothing to cache
    cfg_train = dataclasses.replace(spec.train, cache=spec.train.cache and not fresh_views)
    why_off = ("random augmentation draws new views every epoch, so the full loop runs (cache K fixed "
               "augmented views per image to use the cache)" if fresh_views and spec.train.cache else "turned off")
    config = {
        "model": spec.model, "source": info.source, "head_kind": spec.head, "head": info.head,
        "num_classes": len(report.classes), "data_config": cfg.to_dict(), "strategy": spec.strategy,
        "thaw_last": spec.thaw_last, "bn": spec.bn, "weights": info.weights.source or "random",
        "weights_file": str(info.weights.path) if info.weights.path else None,
        "plans": [p.plan.to_dict() for p in phases], "phases": [
            {"name": p.name, "epochs": p.epochs, "lr": p.lr} for p in phases],
        "train": spec.train.to_dict(), "augment": spec.augment.to_dict(), "val_frac": spec.val_frac,
        "per_class": spec.per_class, "train_fraction": spec.train_fraction, "data": report.root, "train_size": len(train_items),
        "val_size": len(val_items), "engine": spec.engine,
    }

    def keep_best(h: training.History) -> None:  # the best epoch so far, in case the process dies
        runs.save_checkpoint(out, h.best_state, {**config, "best_epoch": h.best_epoch, "checkpoint": True},
                             h.epochs, report.classes)

    if out is not None and checkpoints:
        runs.save_split(out, train_items, val_items)
    history = training.fit(model, train_loader, val_loader, phases, cfg_train, on_event, stop, cache_pool,
                           why_off, keep_best if out is not None and checkpoints else None, spec.engine,
                           spec.model)
    run_dir = None
    if out is not None and history.epochs:
        config.update({"best_epoch": history.best_epoch, "stopped": history.stopped,
                       "feature_cache": history.cache})
        runs.save_split(out, train_items, val_items)
        if predictions:
            runs.save_predictions(out, evaluation.predict(model.cpu(), val_items, cfg, spec.train.batch_size,
                                                                engine=spec.engine, name=spec.model))
        run_dir = runs.save(out, model.cpu(), config, history.epochs, report.classes)
        shutil.rmtree(run_dir / runs.CHECKPOINT, ignore_errors=True)  # the run is complete: its files say all
    return Result(model, info, history, run_dir, report.classes, val_items)


def resume(run_dir: str | Path, report: data.DataReport, epochs: int, out: str | Path | None,
           on_event: Callable[[Event], None] | None = None, stop: threading.Event | None = None,
           resumed: tuple[Spec, tuple] | None = None) -> Result:
    """Continue a saved run for `epochs` more epochs: its weights, its last freeze plan, its settings.

    The optimizer starts afresh (run folders keep weights, not optimizer state); the new run folder's
    config names the run it continues. `resumed`: what `prepare_resume` gave for these arguments (a caller
    that showed its notes first), else it is made here.
    """
    spec, prepared = resumed or prepare_resume(run_dir, report, epochs)
    result = train(spec, report, out, on_event, stop, prepared=prepared)
    if result.run_dir is not None:
        config = fileio.read_json(result.run_dir / "config.json")
        config["resumed_from"] = str(Path(run_dir).resolve())
        fileio.write_json(result.run_dir / "config.json", config)  # atomically, as every run file
    return result


def prepare_resume(run_dir: str | Path, report: data.DataReport, epochs: int) -> tuple[Spec, tuple]:
    """The spec and (model, info, phases) that continue a saved run: its model and last freeze plan, for
    `epochs` more epochs. info.notes say which folder it continues and, for a run that was interrupted,
    that it goes on from its best epoch (`vislab train --resume` prints them)."""
    model, run = runs.load(run_dir)
    if report.classes != run.classes:
        raise data.DataError(f"the run was trained on classes {run.classes}, this dataset has {report.classes}")
    cfg = run.config
    train_cfg = TrainConfig(**{**cfg["train"], "epochs": epochs})
    spec = Spec(model=cfg["model"], strategy=cfg["strategy"], thaw_last=cfg.get("thaw_last", 1), bn=cfg.get("bn"),
                head=cfg["head_kind"], weights="auto", img_size=run.data_config.size, val_frac=cfg["val_frac"],
                per_class=cfg.get("per_class"), train=train_cfg, augment=Augment(**cfg.get("augment", {})),
                engine=cfg.get("engine", "auto"))  # run configs from before engines lack it
    info = models.ModelInfo(cfg["model"], cfg["source"], cfg["head"], cfg["head_kind"], len(run.classes),
                            run.data_config, WeightsStatus(cfg["model"], None, None), [f"resumed from {run.path}"])
    if cfg.get("checkpoint"):
        info.notes.append(f"{INTERRUPTED_NOTE} ({cfg.get('best_epoch')})")
    last_lr = cfg["phases"][-1]["lr"] if cfg.get("phases") else train_cfg.lr
    phases = [training.Phase(freezing.FreezePlan.from_dict(cfg["plans"][-1]), epochs, last_lr, "resumed")]
    return spec, (model, info, phases)


def export_prefix(model_name: str, img_size: int | None = None) -> str:
    """Export `model_name`'s head-only frozen prefix (its weights as a run finds them) to the engines' disk
    cache ahead of any run (set-up calls it for the seeded models), so the first head-only run on this server
    reuses the export. Returns what happened, in words."""
    spec = Spec(model=model_name, strategy="head", weights="auto", img_size=img_size)
    model, info, _ = prepare(spec, 2)  # the head is not part of the prefix: any number of classes
    model.eval()
    probe = torch.randn(2, *info.data_config.input_size)
    prefix = find_prefix(model, probe)
    if prefix is None or not reproduces(model, prefix, probe):
        return "no frozen prefix to export"
    return engines.export_ahead(model, prefix.stubs, probe, model_name)
