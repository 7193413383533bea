"""The feature cache: the frozen prefix (prefix.py) run once over every image, training runs from there.

With a frozen backbone every epoch recomputes the same features. Here the prefix's output is computed
once per image, in the engine that runs it fastest (engines.py), with the images decoded beside it
(decoding.py), and kept in memory or, when large, in a file on disk; during training the prefix modules
are swapped for `nn.Identity` and the model is called on the cached tensors (prefix.stubbed). Runs that
share a frozen prefix (same weights, by prefix.fingerprint) and the same images share its features (`pool`).
"""

from __future__ import annotations

import functools
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from vislab import _paths as paths
from vislab._modes import inference
from vislab.data.datasets import ViewSampler
from vislab.training import decoding, engines
from vislab.training.prefix import (Prefix, PrefixModule, find_prefix, fingerprint, memory_format_of, prefix_outputs,
                                    reproduces, stubbed)

MEMORY_LIMIT_BYTES = 1 << 30  # features up to 1 GiB stay in memory; larger ones spill to a file on disk
DISK_LIMIT_BYTES = 32 << 30  # beyond this, caching is not worth it: the full loop


@dataclass
class Cache:
    prefix: Prefix
    train: DataLoader  # (features, label) batches, same order as the image loader for the same seed
    val: DataLoader
    seconds: float  # time spent running the prefix once over all images
    nbytes: int
    spill: tempfile.TemporaryDirectory | None = None  # the on-disk copy when too large for memory (removed with us)
    shared: bool = False  # reused from an earlier run with the same frozen prefix
    continued: str = ""  # computed from an earlier run's cached output of this shorter prefix's last module
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
        else:  # cheaper than the prefix: a worker beside it would only slow it down (decoding.py)
            decoding = f"decoding {self.decode_seconds:.1f} s in line, the prefix {self.prefix_seconds:.1f} s"
        how = "shared with an earlier run" if self.shared else (
            f"continued from the cached output of '{self.continued}', {self.seconds:.1f} s" if self.continued else
            f"run once by {self.engine}, {self.seconds:.1f} s (choosing the engine on the first batch cost "
            f"{self.choose_seconds:.1f} s; "
            f"{decoding})")
        return (f"features cached: prefix ({len(self.prefix.stubs)} modules up to '{self.prefix.stubs[-1]}') "
                f"{how}, {self.nbytes / 2**20:.0f} MiB {where}; training runs from '{self.prefix.boundary}'")


def build(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader, device: torch.device,
          seed: int, stop=None, pool: dict | None = None,
          on_progress: Callable[[int, int], None] | None = None, engine: str = "auto",
          name: str = "") -> tuple[Cache | None, str]:
    """Cache the prefix outputs of both splits, or (None, why not) when it does not apply.

    `pool` (a dict kept by the caller) shares features between runs with the same frozen prefix and data.
    `on_progress(done, total)` is called after each batch with the images run through the prefix so far.
    `engine` (auto | torch | onnxruntime) runs the prefix (engines.choose; `name`, the model's, keys its
    exports on disk); images are decoded in worker processes while the prefix runs (decoding.py)."""
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
    digest = fingerprint(model, prefix.stubs)
    key = (tuple(prefix.stubs), digest, _data_key(train_loader.dataset), _data_key(val_loader.dataset))
    # pool[key], not pool.get: a caller's pool may watch its lookups (compare's _Pool logs each reuse)
    if pool is not None and (found := pool[key] if key in pool else _from_larger(pool, key)) is not None:
        feats, nbytes, spill = found
        return _cache(prefix, feats, train_loader, val_loader, seed, 0.0, nbytes, spill, shared=True), ""
    if pool is not None and (chained := _from_shorter(pool, model, prefix, key, first_x, device)) is not None:
        (feats, nbytes, spill), seconds, shorter = chained
        cache = _cache(prefix, feats, train_loader, val_loader, seed, seconds, nbytes, spill)
        cache.continued = shorter
        return cache, ""
    with inference(model):
        sample = prefix_outputs(model, prefix, first_x[:1])  # (1, ...) one image's features
        n_images = len(train_loader.dataset) + len(val_loader.dataset)
        nbytes = n_images * sample.numel() * sample.element_size()
        if nbytes > DISK_LIMIT_BYTES:
            return None, f"cached features would take {nbytes / 2**30:.0f} GiB"
        spill = tempfile.TemporaryDirectory(prefix="vislab-cache-", dir=_spill_dir()) \
            if nbytes > MEMORY_LIMIT_BYTES else None
        stores = (_store(len(train_loader.dataset), sample, spill, "train", device),
                  _store(len(val_loader.dataset), sample, spill, "val", device))
        choose = functools.partial(engines.choose, model, prefix.stubs, choice=engine, pass_images=n_images,
                                   name=name, memory_format=memory_format_of(model), digest=digest)
        done = _fill(stores, train_loader, val_loader, device, spill is not None, choose, stop, on_progress)
    if isinstance(done, str):
        return None, done
    n_train = len(train_loader.dataset)
    feats = {"train": (stores[0], done.labels[:n_train]), "val": (stores[1], done.labels[n_train:])}
    if pool is not None:
        pool[key] = (feats, nbytes, spill)
    cache = _cache(prefix, feats, train_loader, val_loader, seed, time.perf_counter() - start, nbytes, spill)
    cache.engine, cache.decode_seconds, cache.prefix_seconds = done.engine, done.decode, done.prefix
    cache.decode_workers, cache.choose_seconds = done.workers, done.choose
    return cache, ""


@dataclass
class _Pass:
    """What one caching pass over the images measured, and their labels in pass order."""
    labels: torch.Tensor
    engine: str  # engines.Engine.describe of the engine that ran the prefix
    decode: float  # seconds decoding, summed over images
    prefix: float  # seconds in the prefix, in this process
    choose: float  # seconds choosing the engine, beyond the first batch's own prefix time
    workers: int  # decode worker processes (0: in line)


def _fill(stores, train_loader: DataLoader, val_loader: DataLoader, device: torch.device, to_cpu: bool,
          choose: Callable[[torch.Tensor], engines.Engine], stop, on_progress) -> _Pass | str:
    """Every image of both splits through the prefix once, its outputs written into `stores` (train, val)
    in index order; the engine is chosen on the first batch (`choose`). Returns the pass, or why it ended."""
    images = decoding.ImagePass(train_loader, val_loader)
    n_train, n_images = len(train_loader.dataset), len(train_loader.dataset) + len(val_loader.dataset)
    runner, done, ys = None, 0, []
    decode_s = prefix_s = choose_s = 0.0
    for x, y, decode in images.batches(lambda: decode_s > prefix_s):
        if stop is not None and stop.is_set():
            return "stopped"
        x = x.to(device, non_blocking=True)  # NCHW: the engine converts it when it needs another layout
        t = time.perf_counter()
        if runner is None:  # the first batch is the engines' probe: measured on its own work
            runner = choose(x)
            out = runner.probe_output  # (B, ...) as prefix_outputs gives it
            spent = time.perf_counter() - t
            own = min(spent, runner.seconds_per_image * len(x))  # what the chosen engine costs on it
            prefix_s, choose_s = prefix_s + own, spent - own  # the rest: choosing it
        else:
            out = runner.run(x)
            prefix_s += time.perf_counter() - t
        decode_s += float(decode.sum())
        out = out.cpu() if to_cpu else out
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
        return "no images to cache"
    return _Pass(torch.cat(ys), runner.describe(), decode_s, prefix_s, choose_s, images.workers)


def _from_larger(pool: dict, key: tuple):
    """The features of a training set that lies inside one already in `pool` (a study's smaller fraction:
    same prefix, weights, validation images and transform), as rows of that larger set's store; else None."""
    stubs, digest, (kind, items, *rest), val = key
    if kind != "ImageDataset":  # augmented views store several rows per image: not rows of the items
        return None
    wanted = set(items)
    for (o_stubs, o_digest, (o_kind, o_items, *o_rest), o_val), (feats, nbytes, spill) in pool.items():
        if (o_stubs, o_digest, o_kind, o_rest, o_val) != (stubs, digest, kind, rest, val) or len(o_items) <= len(items):
            continue
        where = {item: i for i, item in enumerate(o_items)}
        if not wanted <= where.keys():
            continue
        rows = torch.tensor([where[item] for item in items])  # this set's order: its sampler indexes it
        store, labels = feats["train"]
        part = {"train": (store[rows], labels[rows]), "val": feats["val"]}
        pool[key] = (part, nbytes, spill)  # the same arrays' rows: asked again, found at once
        return pool[key]
    return None


def _from_shorter(pool: dict, model: nn.Module, prefix: Prefix, key: tuple, first_x: torch.Tensor,
                  device: torch.device):
    """This prefix's features computed from the cached output of a shorter prefix of the same weights and
    images (a study's deeper thaw, cached first): the stubbed model runs only the modules between the two
    cuts on the stored tensors, no image decoded again. ((feats, nbytes, None), seconds, the shorter
    prefix's last module), or None when the pool holds no such prefix."""
    stubs, _, train_key, val_key = key
    for (o_stubs, o_digest, o_train, o_val), (feats, _, _) in list(pool.items()):
        if (o_train, o_val) != (train_key, val_key) or not 0 < len(o_stubs) < len(stubs) \
                or tuple(stubs[:len(o_stubs)]) != o_stubs:
            continue
        shorter = Prefix(list(o_stubs), stubs[len(o_stubs)])
        if fingerprint(model, shorter.stubs) != o_digest or not reproduces(model, shorter, first_x):
            continue
        start = time.perf_counter()
        rest = PrefixModule(model, stubs[-1])
        out, nbytes = {}, 0
        with inference(model), stubbed(model, shorter):
            for split in ("train", "val"):
                store, labels = feats[split]
                parts = [rest(store[i:i + 64].to(device)).detach().clone() for i in range(0, len(store), 64)]
                out[split] = (torch.cat(parts), labels)  # (N, ...) this prefix's output per image
                nbytes += out[split][0].numel() * out[split][0].element_size()
        pool[key] = (out, nbytes, None)
        return pool[key], time.perf_counter() - start, o_stubs[-1]
    return None


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
