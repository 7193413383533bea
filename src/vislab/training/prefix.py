"""The frozen prefix: the start of a network that neither trains nor draws random numbers, as one idea.

With a frozen backbone every epoch recomputes the same features. The modules that run before the first
trainable (or random: dropout, drop-path, BatchNorm in `train` mode) module are found by watching one
forward pass (`find_prefix`). Their output can then be computed once per image (`PrefixModule`: the model
run until the prefix's last module; feature_cache.py keeps those outputs, engines.py runs it in the fastest
engine), and the model trained on it with the prefix swapped for `nn.Identity` (`stubbed`): the rest of its
own `forward` (pooling, flatten, functional dropout, the head) runs unchanged. Whether that reproduces the
full model is checked on real images before it is used (`reproduces`): a model whose forward does other
work between those modules (a ViT adding position embeddings) fails the check and trains the normal way.
`fingerprint` names the prefix's exact weights, so nothing computed from them (cached features, an
exported engine) is ever reused for other weights.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import torch
import torch.nn as nn

from vislab._hooks import forward_with_hooks, temporary_hooks
from vislab._modes import inference
from vislab.models import freezing
from vislab.models.heads import set_module


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


def find_prefix(model: nn.Module, x: torch.Tensor) -> Prefix | None:
    """The frozen deterministic modules before the first moving one, from one forward on `x`."""
    started: list[str] = []
    forward_with_hooks(model, [], x, pre=[(m, lambda mod, a, n=n: started.append(n))
                                          for n, m in model.named_modules() if n])
    modules = dict(model.named_modules())
    boundary = next((n for n in started if _moving(modules[n])), None)
    if boundary is None:
        return None
    before = started[:started.index(boundary)]
    ancestors = {boundary.rsplit(".", k)[0] for k in range(1, boundary.count(".") + 1)}
    # a module inside a block that holds the boundary can only be cut out if that block just chains its
    # children (nn.Sequential): a residual block's forward also uses its own input (x + f(x)), which a
    # stub would replace with the cached tensor
    unsafe = {a for a in ancestors if not isinstance(modules[a], (nn.Sequential, nn.ModuleList))}
    candidates = [n for n in dict.fromkeys(before) if n not in ancestors
                  and not any(n.startswith(a + ".") for a in unsafe)]
    outer = [n for n in candidates if not any(n.startswith(c + ".") for c in candidates)]
    if not outer:
        return None
    return Prefix(outer, boundary)


class PrefixModule(nn.Module):
    """The model run up to the end of its prefix: the forward stops (by an exception from a forward hook)
    once the last stub has produced its output, which is returned. Works for any forward, chain or not."""

    def __init__(self, model: nn.Module, last: str):
        super().__init__()
        self.model, self.last = model, last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: list[torch.Tensor] = []

        def capture(module, args, output):
            out.append(output)
            raise _Stop

        try:
            with temporary_hooks([(self.model.get_submodule(self.last), capture)]):
                self.model(x)
        except _Stop:
            pass
        return out[-1]  # (B, ...) a pooled vector, or a spatial map for an attention head


class _Stop(Exception):
    pass


@torch.no_grad()
def prefix_outputs(model: nn.Module, prefix: Prefix, x: torch.Tensor) -> torch.Tensor:
    """What flows out of the prefix for a batch: the output of its last module (the forward stops there)."""
    return PrefixModule(model, prefix.stubs[-1])(x).detach().clone()


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


def reproduces(model: nn.Module, prefix: Prefix, x: torch.Tensor, atol: float = 1e-4) -> bool:
    """True when running the stubbed model on the cached tensor gives the full model's logits."""
    with inference(model):
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


@torch.no_grad()
def fingerprint(model: nn.Module, stubs: list[str]) -> str:
    """sha256 of the prefix modules' structure (their repr: layer types, shapes, activations) and the exact
    bytes of their state (in the standard layout, so channels_last weights hash as their contiguous copy).
    Anything computed from the prefix (cached features, an exported engine) is keyed by it: one changed
    weight value means a new key, never a reuse."""
    h = hashlib.sha256()
    for stub in stubs:
        module = model.get_submodule(stub)
        h.update(repr(module).encode())
        for key, value in module.state_dict().items():
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # any dtype
    return h.hexdigest()


def memory_format_of(model: nn.Module) -> torch.memory_format:
    """channels_last when training put the model's convolutions in it (loop._memory_format): the layout
    the prefix's images are handed over in."""
    for m in model.modules():  # the first convolution whose weight layout tells the two formats apart
        if isinstance(m, nn.Conv2d) and m.weight.shape[1] > 1 and m.weight.shape[2] * m.weight.shape[3] > 1:
            cl = m.weight.is_contiguous(memory_format=torch.channels_last) and not m.weight.is_contiguous()
            return torch.channels_last if cl else torch.contiguous_format
    return torch.contiguous_format
