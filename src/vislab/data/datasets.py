"""The torch side of a dataset: (image tensor, label) pairs from (path, label) items, and K fixed random
views of each training image with the sampler that walks them (what makes augmented training cacheable)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler

from vislab.data.transforms import load_image


class ImageDataset(Dataset):
    """(image tensor, label) pairs from (path, label) items through a transform."""

    def __init__(self, items: list[tuple[str, int]], transform):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        return self.transform(load_image(path)), label


class AugmentedViews(Dataset):
    """K fixed random views of each training image: item `view * n + i` is view `view` of image `i`.

    Each view's augmentation is drawn from its own seed (seed, view, image), so a view is the same pixels
    whenever it is asked for: in the image loop, and once in the frozen-prefix cache (training/feature_cache.py), which
    therefore can cache augmented training too. ViewSampler walks the views, one per image per epoch."""

    def __init__(self, items: list[tuple[str, int]], transform, views: int, seed: int):
        if views < 1:
            raise ValueError("views must be at least 1")
        self.items, self.transform, self.views, self.seed = list(items), transform, views, seed
        self.n_images = len(self.items)

    def __len__(self) -> int:
        return self.views * self.n_images

    def __getitem__(self, j: int):
        view, i = divmod(j, self.n_images)
        path, label = self.items[i]
        img = load_image(path)
        with torch.random.fork_rng(devices=[]):  # torchvision's random transforms draw from torch's RNG
            torch.manual_seed((self.seed * 1_000_003 + view * 10_007 + i) % (2**63))
            return self.transform(img), label


class ViewSampler(Sampler[int]):
    """Every image once per epoch, in a seeded random order; epoch e uses view e mod K of each image.

    One sampler object serves both the image loader and the cached-feature loader of a run, so the two see
    the same order and views; it counts epochs itself (each pass over it is one epoch)."""

    def __init__(self, n_images: int, views: int, generator: torch.Generator):
        self.n_images, self.views, self.generator, self.epoch = n_images, views, generator, 0

    def __len__(self) -> int:
        return self.n_images

    def __iter__(self):
        offset = (self.epoch % self.views) * self.n_images
        self.epoch += 1
        yield from (offset + i for i in torch.randperm(self.n_images, generator=self.generator).tolist())
