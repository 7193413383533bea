"""The course's key ideas as small live demos, computed from real modules (never typed-in numbers).

  gap_vs_flatten            a GAP head has C*K weights and runs at any input size; a flatten head has C*H*W*K
                            and fails as soon as H, W change
  stacked_3x3_vs_7x7        three 3x3 convs see a 7x7 window, like one 7x7, with 27C^2 instead of 49C^2 weights
  residual_gradient_norms   gradients vanish toward the input of a deep plain stack, not with x + f(x)
  se_toy                    the Squeeze-and-Excitation formula step by step
  attention_toy             softmax(Q K^T / sqrt(d)) V step by step
  print_vs_execution_order  print(model) lists modules as __init__ defines them, not as forward runs them

Every function returns plain data (dataclasses, dicts of numpy arrays) for a page to plot. Weights are
drawn with the global RNG forked and seeded (`torch.random.fork_rng`), so the caller's RNG is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from vislab._hooks import forward_with_hooks
from vislab.models import heads, factory as models
from vislab.views import layer_order


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------- GAP vs flatten

@dataclass
class GapFlattenDemo:
    model: str
    reference_size: int  # the input size the flatten head is built for
    feature_shape: tuple[int, int, int]  # (C, H, W) of the last feature map at reference_size
    num_classes: int  # K, the model's own head width
    flatten_params: int  # C*H*W*K + K, counted from a real nn.Linear(C*H*W, K)
    gap_params: int  # C*K + K, counted from the model's own head
    runs: list[dict] = field(default_factory=list)  # one per size, see `gap_vs_flatten`


def _feature_map(model: nn.Module, x: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the last (B, C, H, W) map with H*W > 1 computed before the head runs, the logits)."""
    head = model.get_submodule(heads.head_name(model))
    maps, done = [], []

    def record(module, args, out) -> None:
        if not done and isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[1] == channels \
                and out.shape[2] * out.shape[3] > 1:
            maps.append(out)

    logits = forward_with_hooks(model, [(m, record) for m in model.modules() if m is not head], x,
                                pre=[(head, lambda m, args: done.append(True))])
    if not maps:
        raise ValueError(f"{type(model).__name__} has no (C, H, W) feature map before its head")
    return maps[-1], logits


def gap_vs_flatten(model_name: str = "resnet18", sizes=(160, 224, 288), reference_size: int = 224,
                   seed: int = 0) -> GapFlattenDemo:
    """Run the real model (random weights, eval, batch 1) at each size, and a flatten head on its feature maps.

    runs: {"size", "feature_shape" (C, H, W), "gap_output_shape" (the model's logits), "flatten_ok",
    "flatten_output_shape" (None when it failed), "flatten_error" (plain words, "" when it worked)}.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = models.build_architecture(model_name).eval()
        head = model.get_submodule(heads.head_name(model))
        channels, num_classes = heads.in_features(head), heads.num_outputs(model)
        maps = {s: _feature_map(model, torch.randn(1, 3, s, s), channels) for s in {*sizes, reference_size}}
        c, h, w = maps[reference_size][0].shape[1:]
        flatten = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))  # built for reference_size
    demo = GapFlattenDemo(model_name, reference_size, (c, h, w), num_classes, _params(flatten), _params(head))
    for s in sizes:
        fmap, logits = maps[s]  # (1, C, h, w), (1, K)
        row = {"size": s, "feature_shape": tuple(fmap.shape[1:]), "gap_output_shape": tuple(logits.shape),
               "flatten_ok": True, "flatten_output_shape": None, "flatten_error": ""}
        try:
            with torch.no_grad():
                row["flatten_output_shape"] = tuple(flatten(fmap).shape)
        except RuntimeError as exc:
            _, fh, fw = fmap.shape[1:]
            row["flatten_ok"] = False
            row["flatten_error"] = (f"the flatten head expects {c * h * w} inputs ({c}x{h}x{w} at {reference_size} px), "
                                    f"got {c * fh * fw} ({c}x{fh}x{fw} at {s} px): "
                                    f"{str(exc).strip().splitlines()[0]}")
        demo.runs.append(row)
    return demo


# ----------------------------------------------------------------------------------------------- 3x3 vs 7x7

@dataclass
class ConvStackDemo:
    channels: int
    bias: bool  # whether the convs have a bias (False: params are exactly 27C^2 and 49C^2)
    stacked_params: int  # three Conv2d(C, C, 3, padding=1)
    single_params: int  # one Conv2d(C, C, 7, padding=3)
    stacked_relus: int  # nonlinearities: 3 vs 1, the other gain of stacking
    single_relus: int
    stacked_rf_steps: list[int]  # receptive field after each conv, from the recursion
    single_rf_steps: list[int]
    stacked_window: int  # side of the input window where d(centre output)/d(input) != 0
    single_window: int
    stacked_grad: np.ndarray  # (H, W) |gradient| of the centre output pixel w.r.t. the input, summed over channels
    single_grad: np.ndarray


def receptive_field(layers: nn.Module) -> list[int]:
    """Receptive field after each conv/pool: r += (k - 1) * dilation * jump; jump *= stride."""
    r, jump, steps = 1, 1, []
    for m in layers.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s, d = (getattr(m, a, 1) for a in ("kernel_size", "stride", "dilation"))
            k, s, d = (v[0] if isinstance(v, tuple) else v for v in (k, s, d))
            r, jump = r + (k - 1) * d * jump, jump * s
            steps.append(r)
    return steps


def gradient_window(layers: nn.Module, channels: int, size: int = 15, seed: int = 0) -> tuple[int, np.ndarray]:
    """(side of the square where the centre output's gradient is nonzero, the |gradient| map (H, W))."""
    x = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    out = layers(x)  # (1, C, size, size): padding keeps the size
    out[0, :, size // 2, size // 2].sum().backward()
    grad = x.grad[0].abs().sum(0)  # (H, W)
    rows, cols = torch.nonzero(grad, as_tuple=True)
    side = int(rows.max() - rows.min() + 1)
    if int(cols.max() - cols.min() + 1) != side or len(rows) != side * side:
        raise RuntimeError("the gradient is not nonzero over a full square window")
    return side, _np(grad)


def stacked_3x3_vs_7x7(channels: int = 64, bias: bool = False, seed: int = 0) -> ConvStackDemo:
    """Three 3x3 convs (each with a ReLU) against one 7x7 conv (one ReLU), C channels in and out."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        stacked = nn.Sequential(*[m for _ in range(3) for m in (nn.Conv2d(channels, channels, 3, padding=1, bias=bias),
                                                                 nn.ReLU())])
        single = nn.Sequential(nn.Conv2d(channels, channels, 7, padding=3, bias=bias), nn.ReLU())
    relus = [sum(isinstance(m, nn.ReLU) for m in s.modules()) for s in (stacked, single)]
    (sw, sg), (ow, og) = gradient_window(stacked, channels, seed=seed), gradient_window(single, channels, seed=seed)
    return ConvStackDemo(channels, bias, _params(stacked), _params(single), *relus,
                         receptive_field(stacked), receptive_field(single), sw, ow, sg, og)


# ----------------------------------------------------------------------------------------------- residuals

@dataclass
class GradientDemo:
    depth: int
    width: int
    plain: np.ndarray  # (depth,) ||dL/dW|| of layer 1..depth (input side first), x = relu(W x + b)
    residual: np.ndarray  # (depth,) the same weights, x = x + relu(W x + b)
    first_layer_ratio: float  # plain[0] / residual[0]


def make_stack(depth: int, width: int, seed: int) -> nn.ModuleList:
    """`depth` nn.Linear(width, width) with PyTorch's default init, drawn after torch.manual_seed(seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.ModuleList(nn.Linear(width, width) for _ in range(depth))


def _weight_grad_norms(layers: nn.ModuleList, x: torch.Tensor, target: torch.Tensor, residual: bool) -> np.ndarray:
    for layer in layers:
        x = x + torch.relu(layer(x)) if residual else torch.relu(layer(x))  # (B, width)
    loss = (x * target).mean()  # a fixed random linear readout: dL/dx at the output does not depend on x
    grads = torch.autograd.grad(loss, [layer.weight for layer in layers])
    return np.array([g.norm().item() for g in grads])


def residual_gradient_norms(depth: int = 30, width: int = 32, seed: int = 0, batch: int = 64) -> GradientDemo:
    """One forward/backward of a random batch: loss = mean(out * target), x and target ~ N(0, 1) from Generator(seed).

    The readout loss keeps the comparison about depth alone: with MSE the residual stack's outputs (which grow
    with depth: no normalisation, and ReLU branches only add) would inflate all its gradients too.
    """
    g = torch.Generator().manual_seed(seed)
    x, target = torch.randn(batch, width, generator=g), torch.randn(batch, width, generator=g)  # (B, width)
    plain = _weight_grad_norms(make_stack(depth, width, seed), x, target, residual=False)
    res = _weight_grad_norms(make_stack(depth, width, seed), x, target, residual=True)
    return GradientDemo(depth, width, plain, res, float(plain[0] / res[0]))


# ----------------------------------------------------------------------------------------------- SE, attention

def se_toy(seed: int = 0, channels: int = 6, reduction: int = 2, h: int = 4, w: int = 4) -> dict[str, np.ndarray]:
    """out = x * sigmoid(fc2(relu(fc1(mean_hw(x))))) with fc1, fc2 real 1x1 nn.Conv2d (with bias).

    Keys: x (C, H, W), w1 (C/r, C), b1, w2 (C, C/r), b2, squeeze (C,), fc1 (C/r,), relu (C/r,), fc2 (C,),
    gate (C,), out (C, H, W).
    """
    hidden = channels // reduction
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fc1, fc2 = nn.Conv2d(channels, hidden, 1), nn.Conv2d(hidden, channels, 1)
        x = torch.randn(1, channels, h, w)  # (1, C, H, W)
    with torch.no_grad():
        squeeze = x.mean((2, 3), keepdim=True)  # (1, C, 1, 1)
        z1 = fc1(squeeze)  # (1, C/r, 1, 1)
        a1 = torch.relu(z1)
        z2 = fc2(a1)  # (1, C, 1, 1)
        gate = torch.sigmoid(z2)
        out = x * gate  # (1, C, H, W)
    flat = lambda t: _np(t).reshape(-1)
    return {"x": _np(x[0]), "w1": _np(fc1.weight[:, :, 0, 0]), "b1": _np(fc1.bias),
            "w2": _np(fc2.weight[:, :, 0, 0]), "b2": _np(fc2.bias), "squeeze": flat(squeeze), "fc1": flat(z1),
            "relu": flat(a1), "fc2": flat(z2), "gate": flat(gate), "out": _np(out[0])}


def attention_toy(seed: int = 0, tokens: int = 5, dim: int = 8) -> dict[str, np.ndarray]:
    """One head of self-attention on a toy sequence; Wq, Wk, Wv are nn.Linear(dim, dim, bias=False).

    Keys: x (N, d), wq, wk, wv (d, d) as stored by nn.Linear (q = x @ wq.T), q, k, v (N, d),
    scores (N, N) = q k^T / sqrt(d), attn (N, N) softmax over each row (rows sum to 1), out (N, d) = attn v.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        wq, wk, wv = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        x = torch.randn(tokens, dim)  # (N, d)
    with torch.no_grad():
        q, k, v = wq(x), wk(x), wv(x)  # (N, d) each
        scores = q @ k.T / dim ** 0.5  # (N, N)
        attn = scores.softmax(dim=-1)
        out = attn @ v  # (N, d)
    return {"x": _np(x), "wq": _np(wq.weight), "wk": _np(wk.weight), "wv": _np(wv.weight), "q": _np(q),
            "k": _np(k), "v": _np(v), "scores": _np(scores), "attn": _np(attn), "out": _np(out)}


# ----------------------------------------------------------------------------------------------- layer order

class ReorderedToy(nn.Module):
    """Defines head, b, a (the order print shows) but runs a -> b -> head. Input (B, 8)."""

    input_size = (8,)

    def __init__(self, width: int = 8, num_classes: int = 3):
        super().__init__()
        self.head = nn.Linear(width, num_classes)
        self.b = nn.Linear(width, width)
        self.a = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))  # (B, num_classes)


def print_vs_execution_order(model: nn.Module, input_size=None) -> dict:
    """definition (print order), execution (forward order), and the layers whose position differs.

    input_size: (C, H, W) or (features,) of one input; None reads `model.input_size` (ReorderedToy has one).
    Keys: definition, execution (leaf names), differs (names at another position in the two lists, in
    execution order), positions {name: (definition index, execution index)} for those.
    """
    size = input_size if input_size is not None else model.input_size
    defs, execs = layer_order.definition_order(model), layer_order.execution_order(model, size)
    def_index = {n: i for i, n in enumerate(defs)}
    differs = [n for i, n in enumerate(execs) if def_index.get(n) != i]
    return {"definition": defs, "execution": execs, "differs": differs,
            "positions": {n: (def_index.get(n), execs.index(n)) for n in differs}}
