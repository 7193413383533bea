"""A model's train / eval flags, set for one block of code and put back afterwards, module by module;
`inference` adds no_grad, for a forward that only reads (a view, a probe, an evaluation)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn


@contextmanager
def training_mode(model: nn.Module, on: bool) -> Iterator[nn.Module]:
    """`model.train(on)` inside the block; afterwards every module gets its own flag back.

    Per module, not `model.train(was)`: a block someone set to eval on its own (a frozen BatchNorm, a
    stilled dropout) stays in eval, where a model-wide `train(was)` would switch it back on.
    """
    flags = {m: m.training for m in model.modules()}
    model.train(on)
    try:
        yield model
    finally:
        for m, flag in flags.items():
            m.training = flag


@contextmanager
def inference(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no_grad for one block of code; the training flag of every module is put back."""
    with training_mode(model, False), torch.no_grad():
        yield model
