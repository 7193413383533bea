"""After training: predictions on the validation set, confusion matrix, per-class accuracy, top losses,
and classifying a new image with top-k probabilities."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader

from vislab.models import weights
from vislab.training import engines
from vislab.training.prefix import find_prefix, memory_format_of, reproduces, stubbed
from vislab.data.datasets import ImageDataset
from vislab.data.config import DataConfig
from vislab._modes import inference
from vislab.data.transforms import eval_transform

PROBE_IMAGES = 8  # images the prefix engine is chosen (checked, timed) on before predicting: not a whole batch


@dataclass
class Predictions:
    paths: list[str]
    labels: np.ndarray  # (N,) true class index
    probs: np.ndarray  # (N, K) softmax probabilities
    losses: np.ndarray  # (N,) cross-entropy per image

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(1)

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.labels).mean()) if len(self.labels) else 0.0


def eval_loader(items: list[tuple[str, int]], cfg: DataConfig, batch_size: int = 32) -> DataLoader:
    """(images, labels) batches of image files [(path, label)] in order, through the model's eval transform."""
    return DataLoader(ImageDataset(items, eval_transform(cfg)), batch_size=batch_size, shuffle=False)


def predict(model: nn.Module, items: list[tuple[str, int]], cfg: DataConfig, batch_size: int = 32,
            device: str | torch.device = "cpu", engine: str = "auto", name: str = "") -> Predictions:
    """Softmax and loss of every image. A model frozen up to its head runs its frozen prefix through the
    engine that ran it in training (engines.choose, `name` keys the export; reused from disk), the rest as is."""
    model.to(device)
    probs, losses, labels = [], [], []
    loader = eval_loader(items, cfg, batch_size)
    with inference(model):
        prefix, runner = _frozen_prefix(model, loader.dataset, torch.device(device), engine, name)
        with stubbed(model, prefix) if runner else contextlib.nullcontext():
            for x, y in loader:
                x = x.to(device)
                logits = (model(runner.run(x)) if runner else model(x)).float().cpu()  # (B, K)
                probs.append(logits.softmax(1))
                losses.append(nn.functional.cross_entropy(logits, y, reduction="none"))
                labels.append(y)
    k = getattr(model, "num_classes", None)
    empty = np.zeros((0, k or 0))
    return Predictions([p for p, _ in items], torch.cat(labels).numpy() if labels else np.zeros(0, int),
                       torch.cat(probs).numpy() if probs else empty,
                       torch.cat(losses).numpy() if losses else np.zeros(0))


def _frozen_prefix(model: nn.Module, dataset, device: torch.device, engine: str, name: str):
    """(prefix, engine) when a frozen prefix can run in an engine other than torch, else (None, None)."""
    if engine == "torch" or len(dataset) < 2 or not any(p.requires_grad for p in model.parameters()):
        return None, None  # a model with nothing marked trainable is not one frozen up to its head
    probe = torch.stack([dataset[i][0] for i in range(min(PROBE_IMAGES, len(dataset)))]).to(device)
    prefix = find_prefix(model, probe[:4])
    if prefix is None or not reproduces(model, prefix, probe[:4]):
        return None, None
    runner = engines.choose(model, prefix.stubs, probe, engine, len(dataset), name, memory_format_of(model))
    return (prefix, runner) if runner.name != "torch" else (None, None)


def confusion(pred: Predictions, num_classes: int) -> np.ndarray:
    """(true, predicted) counts, shape (K, K)."""
    cm = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(cm, (pred.labels, pred.predicted), 1)
    return cm


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    totals = cm.sum(1)
    return np.divide(np.diag(cm), totals, out=np.zeros(len(cm)), where=totals > 0)


def top_losses(pred: Predictions, k: int = 12) -> list[int]:
    """Indices of the k validation images the model got most wrong (highest loss first)."""
    return [int(i) for i in np.argsort(-pred.losses)[:k]]


def classify(model: nn.Module, img: Image.Image, cfg: DataConfig, classes: list[str], k: int = 5,
             device: str | torch.device = "cpu") -> list[tuple[str, float]]:
    """Top-k (class name, probability) for one image."""
    model.to(device)
    x = eval_transform(cfg)(img.convert("RGB")).unsqueeze(0).to(device)  # (1, 3, H, W)
    with inference(model):
        probs = model(x).float().softmax(1)[0].cpu()
    top = probs.topk(min(k, len(probs)))
    return [(classes[i] if i < len(classes) else str(i), float(p)) for p, i in zip(top.values, top.indices)]


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, as torchvision ships them."""
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def class_names(model_name: str, num: int) -> list[str]:
    """Names of a model's outputs: those recorded with its weights file, ImageNet's for 1,000, else numbers."""
    record = weights.read_manifest().get(model_name) or {}
    if record.get("class_names") and len(record["class_names"]) == num:
        return list(record["class_names"])
    if num == 1000:
        return imagenet_classes()
    return [f"class {i}" for i in range(num)]
