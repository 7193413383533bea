"""Module hooks that live for one block of code: registered on entry, removed on the way out whatever
happens (an exception in the forward, a hook that stops it early, a registration that fails halfway).

`forward_with_hooks` is the common case, one eval forward without gradients that only reads; the
`temporary_hooks` block is for the others: a backward pass inside it (CAM, a receptive field from the
gradient, feature visualisation) or a forward that is not an inference one (torch.export).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch
import torch.nn as nn

from vislab._modes import inference

Hooks = Iterable[tuple[nn.Module, Callable]]  # [(module, hook)]


@contextmanager
def temporary_hooks(forward: Hooks = (), pre: Hooks = (), prepend: bool = False) -> Iterator[None]:
    """Forward hooks and forward pre-hooks [(module, hook)] on their modules inside the block, removed after.

    Pre-hooks are registered first; `prepend` puts the forward hooks before those already on a module (the
    CAM's leaf must be made before grad-cam's own hook reads the activation).
    """
    handles = []
    try:
        for module, hook in pre:
            handles.append(module.register_forward_pre_hook(hook))
        for module, hook in forward:
            handles.append(module.register_forward_hook(hook, prepend=prepend))
        yield
    finally:
        for h in handles:
            h.remove()


def forward_with_hooks(model: nn.Module, hooks: Hooks, x: torch.Tensor, pre: Hooks = ()):
    """One eval-mode forward of `x` without gradients with temporary forward hooks (and pre-hooks) [(module,
    hook)], always removed; returns the model's output. Training flags are put back (`_modes.inference`)."""
    with temporary_hooks(hooks, pre), inference(model):
        return model(x)
