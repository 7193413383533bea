"""Frozen-prefix caching: run the frozen, deterministic start of a network once per image, train the rest.

With a frozen backbone every epoch recomputes the same features. Here the modules that run before the
first trainable (or random: dropout, drop-path, BatchNorm in `train` mode) module are found by watching
one forward pass; their output is computed once per image; during training they are swapped for
`nn.Identity`, and the model is called on the cached tensor itself, so the rest of its own `forward`
(pooling, flatten, functional dropout, the head) runs unchanged. Whether that reproduces the full model is
checked on real images before it is used: a model whose forward does other work between those modules
(a ViT adding position embeddings) fails the check and trains the normal way.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from vislab import freezing
from vislab.data import ViewSampler
from vislab.heads import set_module
from vislab.modes import training_mode

MEMORY_LIMIT_BYTES = 1 << 30  # features up to 1 GiB stay in memory; larger ones spill to a file on disk
DISK_LIMIT_BYTES = 32 << 30  # beyond this, caching is not worth it: the full loop


@dataclass
class Prefix:
    stubs: list[str]  # outermost modules that run before the boundary, in execution order
    boundary: str  # the first module that trains or is random


def _stochastic(m: nn.Module) -> bool:
    """A random layer (freezing.is_stochastic) with a non-zero rate."""
    if not freezing.is_stochastic(m):
        return False
    p = getattr(m, "drop_prob", getattr(m, "p", None))
    return isinstance(p, (int, float)) and p > 0


def _moving(m: nn.Module) -> bool:
    if any(p.requires_grad for p in m.parameters(recurse=False)):
        return True
    if freezing._is_batchnorm(m) and m.track_running_stats and freezing.bn_mode(m) == "train":
        return True
    return _stochastic(m) and not getattr(m, "_vislab_still", False)  # frozen stages drop nothing


@torch.no_grad()
def find_prefix(model: nn.Module, x: torch.Tensor) -> Prefix | None:
    """The frozen deterministic modules before the first moving one, from one forward on `x`."""
    started: list[str] = []
    handles = [m.register_forward_pre_hook(lambda mod, a, n=n: started.append(n))
               for n, m in model.named_modules() if n]
    try:
        with training_mode(model, False):
            model(x)
    finally:
        for h in handles:
            h.remove()
    modules = dict(model.named_modules())
    boundary = next((n for n in started if _moving(modules[n])), None)
    if boundary is None:
        return None
    before = started[:started.index(boundary)]
    ancestors = {boundary.rsplit(".", k)[0] for k in range(1, boundary.count(".") + 1)}
    modules_by_name = dict(model.named_modules())
    # a module inside a block that holds the boundary can only be cut out if that block just chains its
    # children (nn.Sequential): a residual block's forward also uses its own input (x + f(x)), which a
    # stub would replace with the cached tensor
    unsafe = {a for a in ancestors if not isinstance(modules_by_name[a], (nn.Sequential, nn.ModuleList))}
    candidates = [n for n in dict.fromkeys(before) if n not in ancestors
                  and not any(n.startswith(a + ".") for a in unsafe)]
    outer = [n for n in candidates if not any(n.startswith(c + ".") for c in candidates)]
    if not outer:
        return None
    return Prefix(outer, boundary)


@contextlib.contextmanager
def stubbed(model: nn.Module, prefix: Prefix):
    """Swap the prefix modules for identities; the model then runs on cached prefix outputs."""
    saved = {name: model.get_submodule(name) for name in prefix.stubs}
    try:
        for name in prefix.stubs:
            set_module(model, name, nn.Identity())
        yield saved
    finally:
        for name, module in saved.items():
            set_module(model, name, module)


def full_state_dict(model: nn.Module, originals: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The state_dict the model has without stubs: its live part plus the swapped-out prefix modules."""
    state = dict(model.state_dict())
    for name, module in originals.items():
        state.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    return state


class _Captured(Exception):
    """Raised by the hook once the prefix output is in hand: the rest of the forward is not needed."""


@torch.no_grad()
def prefix_outputs(model: nn.Module, prefix: Prefix, x: torch.Tensor) -> torch.Tensor:
    """What flows out of the prefix for a batch: the output of its last module (the forward stops there)."""
    out: list[torch.Tensor] = []

    def capture(module, args, output):
        out.append(output)
        raise _Captured

    handle = model.get_submodule(prefix.stubs[-1]).register_forward_hook(capture)
    try:
        model(x)
    except _Captured:
        pass
    finally:
        handle.remove()
    return out[-1].detach().clone()


@torch.no_grad()
def reproduces(model: nn.Module, prefix: Prefix, x: torch.Tensor, atol: float = 1e-4) -> bool:
    """True when running the stubbed model on the cached tensor gives the full model's logits."""
    with training_mode(model, False):
        full = model(x)
        cached = prefix_outputs(model, prefix, x)
        with stubbed(model, prefix):
            try:
                again = model(cached)
            except (RuntimeError, ValueError, AssertionError, TypeError, IndexError):
                return False
    if full.shape != again.shape:
        return False
    scale = float(full.abs().max()) if full.numel() else 0.0  # random-init logits can be tiny
    return bool((full - again).abs().max() <= atol * scale + 1e-6)


@dataclass
class Cache:
    prefix: Prefix
    train: DataLoader  # (features, label) batches, same order as the image loader for the same seed
    val: DataLoader
    seconds: float  # time spent running the prefix once over all images
    nbytes: int
    spill: tempfile.TemporaryDirectory | None = None  # the on-disk copy when too large for memory (removed with us)
    shared: bool = False  # reused from an earlier run with the same frozen prefix

    def describe(self) -> str:
        where = "on disk" if self.spill else "in memory"
        how = "shared with an earlier run" if self.shared else f"run once, {self.seconds:.1f} s"
        return (f"features cached: prefix ({len(self.prefix.stubs)} modules up to '{self.prefix.stubs[-1]}') "
                f"{how}, {self.nbytes / 2**20:.0f} MiB {where}; training runs from '{self.prefix.boundary}'")


@torch.no_grad()
def _fingerprint(model: nn.Module, prefix: Prefix) -> tuple:
    """Identifies the prefix's modules and their weights (runs that share it can share its features)."""
    sums = []
    for name in prefix.stubs:
        state = model.get_submodule(name).state_dict()
        sums.append(round(float(sum(v.double().sum() for v in state.values() if v.is_floating_point())), 6))
    return tuple(prefix.stubs), tuple(sums)


def build(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader, device: torch.device,
          seed: int, stop=None, pool: dict | None = None,
          on_progress: Callable[[int, int], None] | None = None) -> tuple[Cache | None, str]:
    """Cache the prefix outputs of both splits, or (None, why not) when it does not apply.

    `pool` (a dict kept by the caller) shares features between runs with the same frozen prefix and data.
    `on_progress(done, total)` is called after each batch with the images run through the prefix so far."""
    start = time.perf_counter()
    probe = val_loader.dataset
    first_x = torch.stack([probe[i][0] for i in range(min(4, len(probe)))]).to(device)  # not a whole batch
    prefix = find_prefix(model, first_x)
    if prefix is None:
        return None, "nothing frozen before the first trainable layer"
    if not reproduces(model, prefix, first_x):
        return None, "this model's forward does work between its frozen modules (e.g. position embeddings)"
    key = (_fingerprint(model, prefix), _data_key(train_loader.dataset), _data_key(val_loader.dataset))
    if pool is not None and key in pool:
        feats, nbytes, spill = pool[key]
        return _cache(prefix, feats, train_loader, val_loader, seed, 0.0, nbytes, spill, shared=True), ""
    feats = {}
    fmt = memory_format_of(model)
    with training_mode(model, False):
        sample = prefix_outputs(model, prefix, first_x[:1])  # (1, ...) one image's features
        n_images = len(train_loader.dataset) + len(val_loader.dataset)
        done = 0
        nbytes = n_images * sample.numel() * sample.element_size()
        if nbytes > DISK_LIMIT_BYTES:
            return None, f"cached features would take {nbytes / 2**30:.0f} GiB"
        spill = tempfile.TemporaryDirectory(prefix="vislab-cache-", dir=_spill_dir()) \
            if nbytes > MEMORY_LIMIT_BYTES else None
        for split, loader in (("train", train_loader), ("val", val_loader)):
            store = _store(len(loader.dataset), sample, spill, split, device)
            ys, at = [], 0
            for x, y in _in_order(loader):
                if stop is not None and stop.is_set():
                    return None, "stopped"
                x = x.to(device, non_blocking=True)
                if fmt is torch.channels_last and x.ndim == 4:
                    x = x.contiguous(memory_format=fmt)
                out = prefix_outputs(model, prefix, x)
                store[at:at + len(out)] = out if spill is None else out.cpu()
                at += len(out)
                ys.append(y)
                done += len(out)
                if on_progress is not None:
                    on_progress(done, n_images)
            feats[split] = (store, torch.cat(ys))
    if pool is not None:
        pool[key] = (feats, nbytes, spill)
    return _cache(prefix, feats, train_loader, val_loader, seed, time.perf_counter() - start, nbytes, spill), ""


def memory_format_of(model: nn.Module) -> torch.memory_format:
    """channels_last when training put the model's convolutions in it (training._memory_format)."""
    for m in model.modules():  # the first convolution whose weight layout tells the two formats apart
        if isinstance(m, nn.Conv2d) and m.weight.shape[1] > 1 and m.weight.shape[2] * m.weight.shape[3] > 1:
            cl = m.weight.is_contiguous(memory_format=torch.channels_last) and not m.weight.is_contiguous()
            return torch.channels_last if cl else torch.contiguous_format
    return torch.contiguous_format


def _data_key(ds) -> tuple:
    """Identifies what a dataset feeds the prefix: its images, their transform (size, crop, normalisation,
    augmentation) and, for augmented views, how many and their seed. Any change means new features."""
    items = getattr(ds, "items", None)
    if items is None:
        return (type(ds).__name__, id(ds), len(ds))
    return (type(ds).__name__, tuple(items), repr(getattr(ds, "transform", None)), getattr(ds, "views", 1),
            getattr(ds, "seed", None))


def _cache(prefix, feats, train_loader, val_loader, seed, seconds, nbytes, spill, shared=False) -> Cache:
    """Loaders over cached features. Training batches come from the image loader's own sampler object
    (its order and, for AugmentedViews, its view per epoch), or, for a plain loader, a seeded shuffle."""
    features = TensorDataset(*feats["train"])
    if isinstance(train_loader.sampler, ViewSampler):
        train = DataLoader(features, batch_size=train_loader.batch_size, sampler=train_loader.sampler,
                           drop_last=train_loader.drop_last)
    else:
        gen = torch.Generator().manual_seed(seed)
        train = DataLoader(features, batch_size=train_loader.batch_size, shuffle=True, generator=gen,
                           drop_last=train_loader.drop_last)
    val = DataLoader(TensorDataset(*feats["val"]), batch_size=val_loader.batch_size, shuffle=False)
    return Cache(prefix, train, val, seconds, nbytes, spill, shared)


def _spill_dir() -> str:
    from vislab import paths

    folder = paths.work_dir() / "feature-cache"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def _store(n: int, sample: torch.Tensor, spill, split: str, device) -> torch.Tensor:
    """An (n, ...) tensor for one split's features: in memory (on the model's device), or memory-mapped."""
    shape = (n, *sample.shape[1:])
    if spill is None:
        return torch.empty(shape, dtype=sample.dtype, device=device)
    array = np.lib.format.open_memmap(f"{spill.name}/{split}.npy", mode="w+", dtype=np.float32, shape=shape)
    return torch.from_numpy(array)  # shares the file's memory: batches are read from disk as they are used


def _in_order(loader: DataLoader) -> DataLoader:
    """The same dataset in index order (the cache is shuffled later, by its own seeded sampler)."""
    return DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory)
