"""The learning-rate finder: an exponential sweep of the learning rate over a few batches, loss smoothed,
and a suggested rate where the loss falls fastest. The model is left exactly as it was.

It trains what the current freeze plan trains, and uses the frozen-prefix cache when it applies, so on a
frozen backbone the sweep costs about one pass over the images. `for_model` builds the sweep's own job (a
copy of the model at the chosen size, eval transforms, loaders); `lr_find` sweeps loaders already built.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from vislab.training import feature_cache, loop as training
from vislab.training.prefix import stubbed
from vislab.data import datasets
from vislab.models import factory as models
from vislab._modes import training_mode
from vislab.data.transforms import eval_transform


@dataclass
class LRSweep:
    lrs: list[float]
    losses: list[float]  # exponentially smoothed, bias-corrected
    suggestion: float  # steepest descent of the smoothed loss
    cached: str  # how the frozen prefix was run


def lr_find(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader, device: str = "cpu",
            start: float = 1e-7, end: float = 1.0, steps: int = 100, beta: float = 0.9,
            weight_decay: float = 1e-4, seed: int = 0) -> LRSweep:
    """Sweep the learning rate from `start` to `end` over up to `steps` batches (cycling the loader)."""
    dev = training.pick_device(device)
    saved = copy.deepcopy(model.state_dict())
    model.to(dev)
    with torch.random.fork_rng(devices=[]), training_mode(model, True):  # the sweep trains; flags back after
        torch.manual_seed(seed)
        cache, why = feature_cache.build(model, train_loader, val_loader, dev, seed)
        loader = cache.train if cache else train_loader
        try:
            with stubbed(model, cache.prefix) if cache else contextlib.nullcontext():
                lrs, losses = _sweep(model, loader, dev, start, end, steps, beta, weight_decay)
        finally:
            model.load_state_dict(saved)
    return LRSweep(lrs, losses, suggest(lrs, losses), cache.describe() if cache else f"no feature cache: {why}")


def for_model(model: nn.Module, info: models.ModelInfo, train_items: list[tuple[str, int]],
              val_items: list[tuple[str, int]], img_size: int, batch: int, seed: int = 0, device: str = "auto",
              steps: int = 100) -> LRSweep:
    """The sweep for `model` (with its freeze plan applied) on these images at `img_size`, run on a copy: the
    model passed in keeps its weights and input size. Raises ValueError for a size the model cannot take."""
    model = training.clone_model(model)
    cfg = info.data_config.with_size(img_size)
    models.fit_input_size(model, info.name, cfg.size)  # a ViT resamples; a fixed-size model says so
    tf = eval_transform(cfg)  # no augmentation: the sweep compares rates, not views
    loaders = training.make_loaders(datasets.ImageDataset(train_items, tf), datasets.ImageDataset(val_items, tf),
                                    training.TrainConfig(batch_size=batch), torch.device("cpu"))
    return lr_find(model, *loaders, device=device, steps=steps, seed=seed)


def _sweep(model, loader, dev, start, end, steps, beta, weight_decay):
    optimizer = training.make_optimizer(model, start, weight_decay)
    factor = (end / start) ** (1 / max(steps - 1, 1))
    criterion = nn.CrossEntropyLoss()
    lrs, losses, avg, best = [], [], 0.0, math.inf
    batches = iter(loader)
    model.train()
    for i in range(steps):
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        lr = start * factor ** i
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = criterion(model(x.to(dev)), y.to(dev))
        if not torch.isfinite(loss):
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        avg = beta * avg + (1 - beta) * loss.item()
        smooth = avg / (1 - beta ** (i + 1))
        lrs.append(lr)
        losses.append(smooth)
        best = min(best, smooth)
        if smooth > 4 * best and i > 10:  # diverged: the rest of the sweep says nothing
            break
    return lrs, losses


def suggest(lrs: list[float], losses: list[float]) -> float:
    """The rate where the smoothed loss drops fastest (steepest negative slope in log-lr)."""
    if len(lrs) < 5:
        return lrs[len(lrs) // 2] if lrs else 1e-3
    lo = max(1, len(lrs) // 10)  # skip the flat start
    hi = max(lo + 2, int(np.argmin(losses)) + 1)  # and everything after the minimum
    slopes = np.gradient(np.asarray(losses[:hi]), np.log10(np.asarray(lrs[:hi])))
    return float(lrs[lo + int(np.argmin(slopes[lo:]))])
