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
from torch.utils.data import DataLoader, Subset, TensorDataset

from vislab.training import engines
from vislab.models import freezing
from vislab.data.datasets import ViewSampler
from vislab.models.heads import set_module
from vislab._modes import training_mode

MEMORY_LIMIT_BYTES = 1 << 30  # features up to 1 GiB stay in memory; larger ones spill to a file on disk
DISK_LIMIT_BYTES = 32 << 30  # beyond this, caching is not worth it: the full loop
PROBE_IMAGES = 8  # images evaluation checks and times a prefix engine on (the caching pass: its first batch)


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
    if freezing.is_batchnorm(m) and m.track_running_stats and freezing.bn_mode(m) == "train":
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


@torch.no_grad()
def prefix_outputs(model: nn.Module, prefix: Prefix, x: torch.Tensor) -> torch.Tensor:
    """What flows out of the prefix for a batch: the output of its last module (the forward stops there)."""
    return engines.PrefixModule(model, prefix.stubs[-1])(x).detach().clone()


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
    engine: str = "torch"  # what ran the prefix and why (engines.Engine.describe)
    decode_seconds: float = 0.0  # JPEG decode + resize of every image, summed over the loader's workers
    prefix_seconds: float = 0.0  # the prefix itself, in the main process
    decode_workers: int = 0  # processes that decoded all but the first batch (0: decoded in line)
    choose_seconds: float = 0.0  # picking the engine on the first batch, beyond that batch's own prefix time:
    # the losing engine's run over it, the check, and the export when there was one

    def describe(self) -> str:
        where = "on disk" if self.spill else "in memory"
        if self.decode_workers:
            decoding = (f"decoding {self.decode_seconds:.1f} s in {self.decode_workers} worker"
                        f"{'s' if self.decode_workers > 1 else ''} overlapped with the prefix's "
                        f"{self.prefix_seconds:.1f} s")
        else:  # cheaper than the prefix: a worker beside it would only slow it down (_in_order)
            decoding = f"decoding {self.decode_seconds:.1f} s in line, the prefix {self.prefix_seconds:.1f} s"
        how = "shared with an earlier run" if self.shared else (
            f"run once by {self.engine}, {self.seconds:.1f} s (choosing the engine on the first batch cost "
            f"{self.choose_seconds:.1f} s; "
            f"{decoding})")
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
          on_progress: Callable[[int, int], None] | None = None, engine: str = "auto",
          name: str = "") -> tuple[Cache | None, str]:
    """Cache the prefix outputs of both splits, or (None, why not) when it does not apply.

    `pool` (a dict kept by the caller) shares features between runs with the same frozen prefix and data.
    `on_progress(done, total)` is called after each batch with the images run through the prefix so far.
    `engine` (auto | torch | onnxruntime) runs the prefix (engines.choose; `name`, the model's, keys its
    exports on disk); images are decoded in worker processes while the prefix runs."""
    start = time.perf_counter()
    if engine not in engines.ENGINES:
        raise engines.EngineError(f"unknown engine '{engine}': use {', '.join(engines.ENGINES)}")
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
    fmt = memory_format_of(model)
    with training_mode(model, False):
        sample = prefix_outputs(model, prefix, first_x[:1])  # (1, ...) one image's features
        n_images = len(train_loader.dataset) + len(val_loader.dataset)
        done = 0
        nbytes = n_images * sample.numel() * sample.element_size()
        if nbytes > DISK_LIMIT_BYTES:
            return None, f"cached features would take {nbytes / 2**30:.0f} GiB"
        runner, t_choose = None, 0.0
        decode_s = prefix_s = 0.0
        spill = tempfile.TemporaryDirectory(prefix="vislab-cache-", dir=_spill_dir()) \
            if nbytes > MEMORY_LIMIT_BYTES else None
        n_train = len(train_loader.dataset)
        stores = [_store(n_train, sample, spill, "train", device),
                  _store(len(val_loader.dataset), sample, spill, "val", device)]
        ys = []
        workers: list[int] = []
        for x, y, decode in _in_order(train_loader, val_loader, lambda: decode_s > prefix_s, workers):
            if stop is not None and stop.is_set():
                return None, "stopped"
            x = x.to(device, non_blocking=True)  # NCHW: the engine converts it when it needs another layout
            t = time.perf_counter()
            if runner is None:  # the first batch is the engines' probe: measured on its own work
                runner = engines.choose(model, prefix.stubs, x, engine, n_images, name, fmt)
                out = runner.probe_output  # (B, ...) as prefix_outputs gives it
                spent = time.perf_counter() - t
                own = min(spent, runner.seconds_per_image * len(x))  # what the chosen engine costs on it
                prefix_s, t_choose = prefix_s + own, spent - own  # the rest: choosing it
            else:
                out = runner.run(x)
                prefix_s += time.perf_counter() - t
            decode_s += float(decode.sum())
            out = out if spill is None else out.cpu()
            cut = min(max(n_train - done, 0), len(out))  # a batch may hold the last train, first val images
            if cut:
                stores[0][done:done + cut] = out[:cut]
            if cut < len(out):
                stores[1][done + cut - n_train:done + len(out) - n_train] = out[cut:]
            ys.append(y)
            done += len(out)
            if on_progress is not None:
                on_progress(done, n_images)
        if runner is None:
            return None, "no images to cache"
        labels = torch.cat(ys)
        feats = {"train": (stores[0], labels[:n_train]), "val": (stores[1], labels[n_train:])}
    if pool is not None:
        pool[key] = (feats, nbytes, spill)
    cache = _cache(prefix, feats, train_loader, val_loader, seed, time.perf_counter() - start, nbytes, spill)
    cache.engine, cache.decode_seconds, cache.prefix_seconds = runner.describe(), decode_s, prefix_s
    cache.decode_workers, cache.choose_seconds = (workers[0] if workers else 0), t_choose
    return cache, ""


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
    from vislab import _paths as paths

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


def _in_order(train: DataLoader, val: DataLoader, decoding_slower: Callable[[], bool], used: list[int]):
    """Both splits' images in index order, train then val (the cache is shuffled later, by its own seeded
    sampler), as (images, labels, decode seconds per image) batches.

    The first batch is decoded here, in line; `decoding_slower()`, asked once it has run through the
    prefix, says whether decoding it took longer than the prefix did. If so, the rest is decoded by worker
    processes at the lowest priority (they take the cycles the prefix leaves), so the pass takes the slower
    of the two, not their sum; if not, decoding stays in line: on a small machine a decoder beside a prefix
    that already uses every core only slows it (measured: MobileNetV2 in onnxruntime on 2 cores, 250 px
    JPEGs, 1.0 s in line vs 1.4-2.0 s with one worker). A training loader with workers of its own (CUDA)
    lends its count. `used` gets the number of workers."""
    both = torch.utils.data.ConcatDataset([train.dataset, val.dataset])
    batch = val.batch_size or 1
    head = range(min(batch, len(both)))
    yield from DataLoader(_Timed(Subset(both, head)), batch_size=batch, shuffle=False)
    rest = range(len(head), len(both))
    if not rest:
        return
    workers = train.num_workers or (decode_workers(len(rest), batch) if decoding_slower() else 0)
    used.append(workers)
    yield from DataLoader(_Timed(Subset(both, rest)), batch_size=batch, shuffle=False, num_workers=workers,
                          pin_memory=train.pin_memory, prefetch_factor=2 if workers else None,
                          worker_init_fn=None if train.num_workers or not workers else _lowest_priority)


def _lowest_priority(_worker_id: int) -> None:
    import os

    try:
        os.nice(19)  # capped at the lowest level, whatever this process had
    except OSError:
        pass


def decode_workers(n_images: int, batch_size: int) -> int:
    """Worker processes for a decode-bound caching pass: none for a pass of two batches or less (starting
    one costs more than it saves) or inside a daemon process (it may not have children); else one per core
    this process may use, at most 4."""
    import multiprocessing
    import os

    if n_images <= 2 * batch_size or multiprocessing.current_process().daemon:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, min(4, cores))


class _Timed(torch.utils.data.Dataset):
    """A dataset's items with the seconds each took to load (decode, resize, normalise)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        start = time.perf_counter()
        x, y = self.dataset[i]
        return x, y, time.perf_counter() - start
