"""The caching pass's images: decoded in line, or by worker processes beside the prefix when that pays.

The caching pass (feature_cache.build) runs every image of both splits through the frozen prefix once.
Decoding (JPEG decode, resize, normalise) and the prefix compete for the same cores, so where decoding
runs is chosen on the first batch: it is decoded here, in line, and timed; if decoding it took longer
than the prefix did, the rest is decoded by worker processes at the lowest priority (they take the cycles
the prefix leaves), so the pass takes the slower of the two, not their sum; if not, decoding stays in line:
on a small machine a decoder beside a prefix that already uses every core only slows it (measured:
MobileNetV2 in onnxruntime on 2 cores, 250 px JPEGs, 1.0 s in line vs 1.4-2.0 s with one worker). A
training loader with workers of its own (CUDA) lends its count.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Callable, Iterator

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset


class ImagePass:
    """Both splits' images in index order, train then val (the cache is shuffled later, by its own seeded
    sampler), as (images, labels, decode seconds per image) batches of the validation loader's size."""

    def __init__(self, train: DataLoader, val: DataLoader):
        self.train, self.val = train, val
        self.workers = 0  # processes that decoded all but the first batch (0: decoded in line)

    def batches(self, decoding_slower: Callable[[], bool]) -> Iterator[tuple[torch.Tensor, torch.Tensor,
                                                                              torch.Tensor]]:
        """`decoding_slower()`, asked once the first batch has run through the prefix, says whether
        decoding it took longer than the prefix did (then workers decode the rest)."""
        both = ConcatDataset([self.train.dataset, self.val.dataset])
        batch = self.val.batch_size or 1
        head = range(min(batch, len(both)))
        yield from DataLoader(_Timed(Subset(both, head)), batch_size=batch, shuffle=False)
        rest = range(len(head), len(both))
        if not rest:
            return
        own = self.train.num_workers
        self.workers = own or (workers_for(len(rest), batch) if decoding_slower() else 0)
        yield from DataLoader(_Timed(Subset(both, rest)), batch_size=batch, shuffle=False,
                              num_workers=self.workers, pin_memory=self.train.pin_memory,
                              prefetch_factor=2 if self.workers else None,
                              worker_init_fn=None if own or not self.workers else _lowest_priority)


def workers_for(n_images: int, batch_size: int) -> int:
    """Worker processes for a decode-bound caching pass: none for a pass of two batches or less (starting
    one costs more than it saves) or inside a daemon process (it may not have children); else one per core
    this process may use, at most 4."""
    if n_images <= 2 * batch_size or multiprocessing.current_process().daemon:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, min(4, cores))


def _lowest_priority(_worker_id: int) -> None:
    try:
        os.nice(19)  # capped at the lowest level, whatever this process had
    except OSError:
        pass


class _Timed(Dataset):
    """A dataset's items with the seconds each took to load (decode, resize, normalise)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        start = time.perf_counter()
        x, y = self.dataset[i]
        return x, y, time.perf_counter() - start
