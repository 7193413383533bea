"""One plain training loop: phases of (freeze plan, epochs, learning rate), progress events, a stop flag.

The loop is split so that a frozen prefix can later run once and be cached: `forward_train` is the only
place that calls the model on a batch.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from vislab.training import feature_cache
from vislab.training.prefix import full_state_dict, memory_format_of, stubbed
from vislab.models import freezing, stages
from vislab.data.datasets import ViewSampler
from vislab.models.freezing import FreezePlan
from vislab._modes import inference


@dataclass
class TrainConfig:
    epochs: int = 3  # total epochs over all phases
    lr: float = 1e-3  # learning rate of the first phase
    phase2_lr_factor: float = 0.1  # two-phase: the second phase runs at lr * this (2-10x smaller)
    batch_size: int = 32
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16 with a grad scaler)
    num_workers: int = -1  # DataLoader workers; -1: auto (CPU: 0, decode in the main process; CUDA: cores - 1)
    cache: bool = True  # run a frozen deterministic prefix once and train the rest (feature_cache.py)
    layer_decay: float | None = None  # per-stage learning rates: lr x decay^(stages from the head); None: one lr

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Phase:
    plan: FreezePlan
    epochs: int
    lr: float
    name: str = "train"


@dataclass
class Event:
    """What the progress callback receives: kind is 'batch', 'epoch', 'phase', 'caching' (the frozen prefix
    is running over the images: `cached` of `to_cache` done), 'cache' (how the prefix was run) or 'end'."""

    kind: str
    epoch: int = 0  # 1-based over the whole run
    epochs: int = 0
    batch: int = 0  # 'batch': the training batch of this epoch, 1-based
    batches: int = 0
    loss: float = 0.0
    metrics: dict | None = None
    phase: str = ""
    message: str = ""
    cached: int = 0  # 'caching': images run through the frozen prefix so far
    to_cache: int = 0  # 'caching': images the pass runs (both splits, every augmented view)


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)  # per epoch: train/val loss and acc, seconds, phase, lr
    best_epoch: int = 0
    best_val_acc: float = -1.0
    stopped: bool = False
    best_state: dict | None = None  # CPU copy of the best state_dict
    cache: list[str] = field(default_factory=list)  # per phase: how the frozen prefix was run
    failure: str = ""  # why training stopped on its own (a non-finite loss)


def pick_device(choice: str = "auto") -> torch.device:
    """auto: CUDA, then Apple MPS, then CPU. An explicit choice that is not there raises ValueError."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if choice == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if choice.startswith("cuda") and not cuda:
        raise ValueError("device cuda asked for, but no CUDA GPU is available here")
    if choice == "mps" and not mps:
        raise ValueError("device mps asked for, but Apple MPS is not available here")
    if choice not in ("cpu", "mps") and not choice.startswith("cuda"):
        raise ValueError(f"unknown device '{choice}': use auto, cpu, cuda or mps")
    return torch.device(choice)


def devices_found() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def seed_everything(seed: int) -> torch.Generator:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_loaders(train_ds, val_ds, cfg: TrainConfig, device: torch.device):
    gen = torch.Generator().manual_seed(cfg.seed)
    pin = device.type == "cuda"
    workers = cfg.num_workers if cfg.num_workers >= 0 else (min(8, max(1, (os.cpu_count() or 2) - 1)) if pin else 0)
    # one sampler object, shared later with the cached-feature loader (feature_cache.py): same order, same views
    n = getattr(train_ds, "n_images", len(train_ds))
    sampler = ViewSampler(n, getattr(train_ds, "views", 1), gen)
    # a last batch of one sample breaks BatchNorm in training mode: drop it only then
    drop_last = n % cfg.batch_size == 1 and n > cfg.batch_size
    train = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=drop_last,
                       num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
    val = DataLoader(val_ds, batch_size=cfg.batch_size, shuffle=False, num_workers=workers, pin_memory=pin)
    return train, val


def _autocast(device: torch.device, enabled: bool):
    if device.type != "cuda" or not enabled:
        return torch.autocast(device_type=device.type, enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float,
                   layer_decay: float | None = None) -> torch.optim.Optimizer:
    """AdamW over trainable parameters only; no weight decay on norms and biases (1-D tensors).

    `layer_decay` (e.g. 0.7) gives each stage its own rate: `lr` at the head, times `layer_decay` for each
    stage further toward the stem, the course's per-layer learning rates.
    """
    stage_list = stages.stages(model)
    owner = {}
    for depth, stage in enumerate(reversed(stage_list)):  # depth 0 is the head
        for root in stage.modules:
            for name, _ in model.get_submodule(root).named_parameters():
                owner[f"{root}.{name}"] = depth
        for name in stage.params:
            owner[name] = depth
    groups: dict[tuple[int, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            depth = owner.get(name, 0) if layer_decay else 0
            groups.setdefault((depth, p.ndim <= 1), []).append(p)
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen")
    return torch.optim.AdamW([
        {"params": params, "weight_decay": 0.0 if no_decay else weight_decay,
         "lr": lr * (layer_decay ** depth if layer_decay else 1.0)}
        for (depth, no_decay), params in sorted(groups.items())], lr=lr)


def forward_train(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)  # (B, num_classes)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = True):
    """Mean loss and accuracy over a loader, the model in eval mode."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    return loss_sum / max(n, 1), correct / max(n, 1)


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    phases: list[Phase],
    cfg: TrainConfig,
    on_event: Callable[[Event], None] | None = None,
    stop: threading.Event | None = None,
    cache_pool: dict | None = None,
    why_no_cache: str = "turned off",
    on_best: Callable[[History], None] | None = None,
    engine: str = "auto",
    model_name: str = "",
) -> History:
    """Train through the phases; returns per-epoch metrics and the best state (by val acc, then loss).

    `cache_pool` lets several runs on the same data share cached frozen-prefix features (feature_cache.build).
    `engine` (auto | torch | onnxruntime) runs the frozen prefix once (engines.py; `model_name` keys its
    exports).
    `on_best(history)` is called each time an epoch becomes the best so far (`history.best_state` holds it),
    so a caller can keep a checkpoint that survives a crash."""
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    model.to(device)
    _memory_format(model, val_loader.dataset, device)
    emit = on_event or (lambda e: None)
    stop = stop or threading.Event()
    use_scaler = device.type == "cuda" and cfg.amp and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    total_epochs = sum(p.epochs for p in phases)
    history = History()
    epoch = 0
    for phase in phases:
        freezing.apply(model, phase.plan)
        optimizer = make_optimizer(model, phase.lr, cfg.weight_decay, cfg.layer_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(phase.epochs, 1))
        emit(Event("phase", epoch, total_epochs, phase=phase.name, message=f"{phase.name}: lr {phase.lr:g}"))
        cache, why = None, why_no_cache
        if cfg.cache:
            with torch.random.fork_rng(devices=[]):  # building it must not shift the dropout RNG stream
                def caching_progress(done, total, e=epoch, name=phase.name):
                    emit(Event("caching", e, total_epochs, phase=name, cached=done, to_cache=total))

                cache, why = feature_cache.build(model, train_loader, val_loader, device, cfg.seed, stop,
                                                 cache_pool, caching_progress, engine, model_name)
        history.cache.append(cache.describe() if cache else f"no feature cache: {why}")
        emit(Event("cache", epoch, total_epochs, phase=phase.name, message=history.cache[-1]))
        with stubbed(model, cache.prefix) if cache else contextlib.nullcontext() as originals:
            snapshot = (lambda: full_state_dict(model, originals)) if cache else model.state_dict
            epoch = _run_phase(model, phase, cache.train if cache else train_loader,
                               cache.val if cache else val_loader, optimizer, scheduler, scaler, criterion,
                               cfg, device, history, epoch, total_epochs, emit, stop, snapshot, on_best)
        if history.stopped:
            break
    return _finish(model, history, emit, total_epochs)


def _run_phase(model, phase, train_loader, val_loader, optimizer, scheduler, scaler, criterion, cfg, device,
               history, epoch, total_epochs, emit, stop, snapshot, on_best=None) -> int:
    """The epochs of one phase; returns the last epoch number. `snapshot()` gives the full state_dict."""
    fmt = memory_format_of(model)
    for _ in range(phase.epochs):
        epoch += 1
        start = time.perf_counter()
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for b, (x, y) in enumerate(train_loader, 1):
            if stop.is_set():
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if fmt is torch.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=fmt)
            with _autocast(device, cfg.amp):
                logits = forward_train(model, x)
                loss = criterion(logits.float(), y)
            if not torch.isfinite(loss):
                history.stopped = True
                history.failure = (f"loss became {loss.item()} at epoch {epoch}, batch {b}: training stopped, "
                                   "the best checkpoint is kept. Try a lower learning rate.")
                emit(Event("end", epoch, total_epochs, message=history.failure))
                return epoch
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            emit(Event("batch", epoch, total_epochs, b, len(train_loader), loss.item(), phase=phase.name))
        if stop.is_set() and seen == 0:
            history.stopped = True
            return epoch
        scheduler.step()
        val_loss, val_acc = evaluate(model, val_loader, device, cfg.amp)
        metrics = {
            "epoch": epoch, "phase": phase.name, "lr": phase.lr,
            "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
            "val_loss": val_loss, "val_acc": val_acc, "seconds": time.perf_counter() - start,
            "partial": stop.is_set(),  # the epoch was cut short by Stop
        }
        history.epochs.append(metrics)
        better = val_acc > history.best_val_acc or (
            val_acc == history.best_val_acc and val_loss < history.epochs[history.best_epoch - 1]["val_loss"])
        if better and math.isfinite(val_loss):
            history.best_val_acc, history.best_epoch = val_acc, epoch
            history.best_state = {k: v.detach().to("cpu", copy=True) for k, v in snapshot().items()}
            if on_best is not None:
                on_best(history)
        emit(Event("epoch", epoch, total_epochs, metrics=metrics, phase=phase.name))
        if stop.is_set():
            history.stopped = True
            return epoch
    return epoch


def _memory_format(model: nn.Module, dataset, device: torch.device) -> torch.memory_format:
    """channels_last for a convolutional network that runs in it: 1.3-1.8x faster convolutions on this
    2-core CPU (MobileNetV2, ResNet, EfficientNet) and what tensor cores want with AMP. A model whose forward
    does not accept it (a `.view` on its maps) stays contiguous: one small forward decides."""
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()) or len(dataset) == 0:
        return torch.contiguous_format
    x = torch.stack([dataset[i][0] for i in range(min(2, len(dataset)))]).to(device)
    if x.ndim != 4:
        return torch.contiguous_format
    try:
        model.to(memory_format=torch.channels_last)
        with inference(model):
            model(x.contiguous(memory_format=torch.channels_last))
        return torch.channels_last
    except Exception:
        model.to(memory_format=torch.contiguous_format)
        return torch.contiguous_format


def _finish(model: nn.Module, history: History, emit, total: int) -> History:
    """Put the best weights back into the model (on its device), in the usual memory format."""
    if history.best_state is not None:
        model.load_state_dict(history.best_state)
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    if not history.failure:
        emit(Event("end", len(history.epochs), total, message="stopped" if history.stopped else "done"))
    return history


def phases_for(strategy: str, plans: list[FreezePlan], epochs: int, lr: float, factor: float) -> list[Phase]:
    """Split epochs over a strategy's plans: two-phase gives the head phase ceil(epochs / 3), at least 1."""
    if len(plans) == 1:
        return [Phase(plans[0], epochs, lr, strategy)]
    if epochs < 2:
        raise ValueError("two-phase training needs at least 2 epochs (one per phase)")
    first = max(1, math.ceil(epochs / 3))
    return [Phase(plans[0], first, lr, "head"), Phase(plans[1], epochs - first, lr * factor, "full")]


def clone_model(model: nn.Module) -> nn.Module:
    """A private copy to fine-tune, leaving a cached pretrained model untouched."""
    return copy.deepcopy(model)
