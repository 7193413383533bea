"""Receptive fields: which input pixels one unit of a layer can see, computed two ways.

**From the architecture.** Per spatial axis a unit's field is (size r, jump j, start s): r input pixels wide,
neighbouring units j pixels apart, unit 0 centred on input pixel s (pixel centres at 0, 1, ...; s < 0 when
padding puts part of the field outside the image). The input is (1, 1, 0); a convolution or pooling window
of kernel k, stride t, padding p and dilation d gives

    k' = d (k - 1) + 1      r <- r + (k' - 1) j      s <- s + ((k' - 1) / 2 - p) j      j <- j t

and an explicit pad (timm's "same" convolutions and pools call F.pad first) moves s by -left * j.
The walk follows one forward pass in execution order. Module forward hooks alone would lose the trail at
every operation that is not a module (a residual `x + f(x)`, `torch.cat`, a permute to channels-last), so
the forward runs under a `TorchFunctionMode` that sees every torch call: convolution and pooling calls
update the field, and any other call passes its inputs' field on to outputs with the same spatial grid,
the union of them when several branches meet (the max over the branches). Forward hooks on the layers
asked for read off their outputs' fields. Global pooling (an SE block's squeeze) makes a field the whole
image; such a gate multiplying a map does not widen that map's field here (`through_gates=False`), because
it rescales channels rather than mixing places; the gradient sees through it and says "everything".

**From the gradient.** Back-propagate from one unit to the input and take the extent of the nonzero input
gradient (over a few random inputs, so a ReLU that happens to be off does not hide a pixel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from vislab._hooks import forward_with_hooks, temporary_hooks
from vislab._modes import training_mode


@dataclass(frozen=True)
class ReceptiveField:
    """A layer's units' receptive field in input pixels, per axis (rows, columns)."""

    size: tuple[int, int]  # pixels one unit sees, (height, width)
    jump: tuple[int, int]  # input pixels between neighbouring units (the layer's total stride)
    start: tuple[float, float]  # input pixel on which unit (0, 0) is centred (may be < 0 or x.5)
    grid: tuple[int, int] = (0, 0)  # the layer's map size (h, w) at the traced input size
    whole: bool = False  # a global pooling came before: every unit sees the whole image

    def box(self, i: int, j: int, height: int, width: int) -> tuple[tuple[int, int, int, int], bool]:
        """Unit (i, j)'s field as pixel bounds (top, left, bottom, right), exclusive bottom/right, clipped to
        a height x width image, and whether it was clipped (part of the field lies outside the image)."""
        if self.whole:
            return (0, 0, height, width), True
        bounds, clipped = [], False
        for idx, size, jump, start, limit in ((i, self.size[0], self.jump[0], self.start[0], height),
                                              (j, self.size[1], self.jump[1], self.start[1], width)):
            centre = start + idx * jump
            lo = math.floor(centre - (size - 1) / 2 + 0.5)  # first pixel whose centre is inside the field
            hi = lo + size
            clipped |= lo < 0 or hi > limit
            bounds.append((max(lo, 0), min(hi, limit)))
        (top, bottom), (left, right) = bounds
        return (top, left, bottom, right), clipped


@dataclass(frozen=True)
class _Axis:  # one axis: size, jump, start
    r: float
    j: float
    s: float

    def window(self, k: int, t: int, p: int, d: int = 1) -> _Axis:
        ke = d * (k - 1) + 1
        return _Axis(self.r + (ke - 1) * self.j, self.j * t, self.s + ((ke - 1) / 2 - p) * self.j)

    def union(self, other: _Axis) -> _Axis:
        lo = min(self.s - (self.r - 1) / 2, other.s - (other.r - 1) / 2)
        hi = max(self.s + (self.r - 1) / 2, other.s + (other.r - 1) / 2)
        return _Axis(hi - lo + 1, max(self.j, other.j), (lo + hi) / 2)


@dataclass(frozen=True)
class _Field:
    axes: tuple[int, int]  # which tensor dims are the rows and the columns
    hw: tuple[int, int]  # their sizes
    y: _Axis
    x: _Axis
    whole: bool = False


def _pair(v, n: int = 2) -> tuple:
    if isinstance(v, (list, tuple)):
        return tuple(v) if len(v) == n else tuple(v) * n
    return (v,) * n


def _arg(args, kwargs, i: int, name: str, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


class _Tracer(TorchFunctionMode):
    """Carries a _Field along every tensor of one forward pass."""

    def __init__(self, through_gates: bool):
        super().__init__()
        self.fields: dict[int, _Field] = {}
        self.keep: list[torch.Tensor] = []  # tensors stay alive, so no id is reused during the trace
        self.through_gates = through_gates

    def field(self, t) -> _Field | None:
        return self.fields.get(id(t)) if isinstance(t, torch.Tensor) else None

    def set(self, t: torch.Tensor, f: _Field) -> None:
        self.keep.append(t)
        self.fields[id(t)] = f

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            self._propagate(func, args, kwargs, out)
        except (TypeError, ValueError, IndexError):  # an unusual call signature: the trail ends there
            pass
        return out

    def _window_op(self, func, args, kwargs, out) -> bool:
        name = getattr(func, "__name__", "")
        x = args[0] if args else None
        f = self.field(x)
        if f is None or not isinstance(out, torch.Tensor) or out.dim() != 4 or f.axes != (2, 3):
            return name in ("conv2d", "max_pool2d", "avg_pool2d", "pad", "max_pool2d_with_indices")
        if name == "conv2d":
            weight = _arg(args, kwargs, 1, "weight")
            k = tuple(weight.shape[-2:])
            t = _pair(_arg(args, kwargs, 3, "stride", 1))
            d = _pair(_arg(args, kwargs, 5, "dilation", 1))
            p = _arg(args, kwargs, 4, "padding", 0)
            if isinstance(p, str):  # "valid" or "same" (torch pads the extra pixel at the end)
                p = (0, 0) if p == "valid" else tuple((di * (ki - 1)) // 2 for ki, di in zip(k, d))
            p = _pair(p)
        elif name in ("max_pool2d", "avg_pool2d", "max_pool2d_with_indices"):
            k = _pair(_arg(args, kwargs, 1, "kernel_size"))
            stride = _arg(args, kwargs, 2, "stride", None)
            t = _pair(stride) if stride not in (None, [], ()) else k
            p = _pair(_arg(args, kwargs, 3, "padding", 0))
            d = _pair(_arg(args, kwargs, 4, "dilation", 1)) if "max" in name else (1, 1)
        elif name == "pad":
            pad = list(_arg(args, kwargs, 1, "pad"))
            left, top = pad[0], (pad[2] if len(pad) > 2 else 0)
            self.set(out, _Field((2, 3), tuple(out.shape[2:]), _Axis(f.y.r, f.y.j, f.y.s - top * f.y.j),
                                 _Axis(f.x.r, f.x.j, f.x.s - left * f.x.j), f.whole))
            return True
        else:
            return False
        self.set(out, _Field((2, 3), tuple(out.shape[2:]), f.y.window(k[0], t[0], p[0], d[0]),
                             f.x.window(k[1], t[1], p[1], d[1]), f.whole))
        return True

    def _propagate(self, func, args, kwargs, out) -> None:
        if self._window_op(func, args, kwargs, out):
            return
        inputs = [t for t in list(args) + list(kwargs.values()) for t in (t if isinstance(t, (list, tuple)) else [t])
                  if self.field(t) is not None]
        if not inputs:
            return
        outs = [o for o in (out if isinstance(out, (list, tuple)) else [out]) if isinstance(o, torch.Tensor)]
        name = getattr(func, "__name__", "")
        for o in outs:
            if name == "permute" and len(inputs) == 1 and o.dim() == inputs[0].dim():
                f = self.field(inputs[0])
                dims = [d % o.dim() for d in (args[1:] if len(args) > 2 or not isinstance(args[1], (list, tuple))
                                              else args[1])]
                self.set(o, _Field((dims.index(f.axes[0]), dims.index(f.axes[1])), f.hw, f.y, f.x, f.whole))
                continue
            merged = None
            for t in inputs:
                f = self.field(t)
                if o.dim() > max(f.axes) and tuple(o.shape[a] for a in f.axes) == f.hw:
                    merged = f if merged is None else _Field(merged.axes, merged.hw, merged.y.union(f.y),
                                                             merged.x.union(f.x), merged.whole or f.whole)
            if merged is not None:
                if self.through_gates and any(self.field(t).whole and self.field(t).hw == (1, 1) for t in inputs):
                    merged = _Field(merged.axes, merged.hw, merged.y, merged.x, True)
                self.set(o, merged)
            elif o.dim() == 2 or (o.dim() > 2 and tuple(o.shape[-2:]) == (1, 1)):  # a global pool
                f = self.field(inputs[0])
                self.set(o, _Field((o.dim() - 2, o.dim() - 1), tuple(o.shape[-2:]), f.y, f.x, True))


def _output_tensor(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def receptive_fields(model: nn.Module, layers: list[str], input_size: tuple[int, int, int],
                     through_gates: bool = False) -> dict[str, ReceptiveField]:
    """The receptive field of each of `layers` (module names) from one traced eval forward of a zero image at
    `input_size` (C, H, W). A layer whose output has no spatial grid traced back to the input is left out."""
    tracer = _Tracer(through_gates)
    seen: dict[str, ReceptiveField] = {}

    def make(name):
        def hook(module, args, output):
            f = tracer.field(_output_tensor(output))
            if f is not None and name not in seen:
                seen[name] = ReceptiveField((round(f.y.r), round(f.x.r)), (round(f.y.j), round(f.x.j)),
                                            (f.y.s, f.x.s), f.hw, f.whole)
        return hook

    param = next(model.parameters(), None)
    x = torch.zeros(1, *input_size, device=param.device if param is not None else "cpu")  # (1, C, H, W)
    tracer.set(x, _Field((2, 3), tuple(input_size[1:]), _Axis(1, 1, 0), _Axis(1, 1, 0)))
    with tracer:
        forward_with_hooks(model, [(model.get_submodule(n), make(n)) for n in layers], x)
    return {n: seen[n] for n in layers if n in seen}


def gradient_extent(model: nn.Module, layer: str, input_size: tuple[int, int, int], unit: tuple[int, int] | None = None,
                    samples: int = 4, seed: int = 0) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """The input pixels that reach unit `unit` (default: the centre) of `layer`, summed over its channels:
    the bounding box (top, left, bottom, right; exclusive) of the nonzero input gradient over `samples`
    random images, and the unit's (i, j)."""
    module = model.get_submodule(layer)
    seen: list[torch.Tensor] = []
    param = next(model.parameters(), None)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, *input_size, generator=g).to(param.device if param is not None else "cpu")
    x.requires_grad_(True)  # (S, C, H, W)
    hook = (module, lambda m, a, out: seen.append(_output_tensor(out)))
    with temporary_hooks([hook]), training_mode(model, False), torch.enable_grad():  # eval, with a backward
        model(x)
        out = seen[0]  # (S, C, h, w)
        i, j = unit if unit is not None else (out.shape[2] // 2, out.shape[3] // 2)
        (grad,) = torch.autograd.grad(out[:, :, i, j].sum(), x)
    reached = (grad.abs().sum(dim=(0, 1)) > 0).cpu().numpy()  # (H, W)
    rows, cols = np.flatnonzero(reached.any(1)), np.flatnonzero(reached.any(0))
    if not len(rows):
        return (0, 0, 0, 0), (i, j)
    return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1), (i, j)
