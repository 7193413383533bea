"""Layer order: `print(model)` shows modules in the order `__init__` defines them (`named_modules()`); the
forward may call them in another order. `execution_order` reads the order from the graph `torch.export`
traces: each node's `meta["nn_module_stack"]` names the modules it runs inside, innermost last
(`features.3.conv.0.0`, the real dotted name). If tracing fails, forward pre-hooks record the first call of
each layer instead. `layer_table` lays the two orders side by side.
"""

from __future__ import annotations

import bisect
import re
import warnings

import torch
import torch.nn as nn

from vislab._hooks import forward_with_hooks
from vislab._modes import training_mode


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()  # no terminal colour codes
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _probe(model: nn.Module, input_size) -> torch.Tensor:
    """One random input on the model's device, from a private generator (the global RNG is left alone)."""
    p = next(model.parameters(), None)
    g = torch.Generator().manual_seed(0)
    return torch.randn((1, *input_size), generator=g).to(p.device if p is not None else "cpu")  # (1, C, H, W)


def _leaves(model: nn.Module) -> dict[str, nn.Module]:
    """Every leaf module (no children), parameter-free ones (ReLU, pooling, dropout) included."""
    return {n: m for n, m in model.named_modules() if n and next(m.children(), None) is None}


def _graph_order(model: nn.Module, input_size) -> list[str]:
    """Leaves in the order the torch.export graph runs their first op."""
    leaves = _leaves(model)
    x = _probe(model, input_size)
    with training_mode(model, False), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # export's own notes; this is only for the layer order
        graph = torch.export.export(model, (x,)).graph
    order: dict[str, int] = {}
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}  # {key: (dotted module name, type)}, outermost first
        if stack:
            name = list(stack.values())[-1][0]
            if name in leaves:  # ops of a container's own forward (a reshape in patch_embed) are skipped
                order.setdefault(name, len(order))
    if leaves and not order:
        raise RuntimeError("the traced graph names none of the model's layers")
    return list(order)


def _hook_order(model: nn.Module, input_size) -> list[str]:
    """Leaves in the order of their first call, from forward pre-hooks (removed again)."""
    seen: dict[str, int] = {}

    def record(name: str):
        def hook(module, args) -> None:  # returns None: a pre-hook's return value would replace the input
            seen.setdefault(name, len(seen))
        return hook

    forward_with_hooks(model, [], _probe(model, input_size), pre=[(m, record(n)) for n, m in _leaves(model).items()])
    return list(seen)


def traced_order(model: nn.Module, input_size) -> tuple[list[str], str]:
    """(leaf names in execution order, where the order comes from)."""
    try:
        return _graph_order(model, input_size), "torch.export graph"
    except Exception as exc:  # noqa: BLE001  any tracing failure: fall back to hooks, and say so
        return _hook_order(model, input_size), f"forward hooks (torch.export failed: {_first_line(exc)})"


def execution_order(model: nn.Module, input_size) -> list[str]:
    """Leaf module names in the order forward runs them (first call), from the traced graph.

    Leaves are modules without children, with or without parameters. A leaf that adds no op to the graph
    (nn.Identity, a layer forward never calls) is not listed.
    """
    return traced_order(model, input_size)[0]


def definition_order(model: nn.Module) -> list[str]:
    """Leaf module names in `named_modules()` order: the order `print(model)` shows."""
    return list(_leaves(model))


def _moved(exec_names: list[str], def_index: dict[str, int]) -> set[str]:
    """Layers outside one longest subsequence that runs in definition order.

    Those are the fewest layers a reader must move in print(model) to read the execution order. For two
    swapped layers (b defined before a, a runs first) `a` is marked: it jumped ahead of its definition.
    """
    seq = [def_index[n] for n in exec_names]
    tails, tail_at, prev = [], [], [None] * len(seq)  # patience sorting, with back pointers
    for i, v in enumerate(seq):
        k = bisect.bisect_left(tails, v)
        prev[i] = tail_at[k - 1] if k else None
        if k == len(tails):
            tails.append(v)
            tail_at.append(i)
        else:
            tails[k], tail_at[k] = v, i
    keep, i = set(), tail_at[-1] if tail_at else None
    while i is not None:
        keep.add(i)
        i = prev[i]
    return {n for j, n in enumerate(exec_names) if j not in keep}


def layer_table(model: nn.Module, input_size) -> list[dict]:
    """One row per leaf, in execution order, then the leaves that never ran (exec_index None).

    name, type, exec_index, def_index (position in execution_order / definition_order), moved (see `_moved`),
    params (own parameter count), trainable (any parameter has requires_grad).
    """
    exec_names, _ = traced_order(model, input_size)
    defs = definition_order(model)
    def_index = {n: i for i, n in enumerate(defs)}
    exec_index = {n: i for i, n in enumerate(exec_names)}
    moved = _moved(exec_names, def_index)
    rows = []
    for name in exec_names + [n for n in defs if n not in exec_index]:
        module = model.get_submodule(name)
        params = list(module.parameters())
        rows.append({
            "name": name,
            "type": type(module).__name__,
            "exec_index": exec_index.get(name),
            "def_index": def_index[name],
            "moved": name in moved,
            "params": sum(p.numel() for p in params),
            "trainable": any(p.requires_grad for p in params),
        })
    return rows
