"""Finding a model's classifier and swapping it for a new one with N outputs.

timm models know their classifier (`pretrained_cfg["classifier"]`, `reset_classifier`); for torchvision
models the classifier is the last `nn.Linear` in definition order (`fc`, `classifier.1`, `heads.head`, ...).
"""

from __future__ import annotations

import torch.nn as nn

HEAD_KINDS = ("linear", "mlp")


def mlp_head(in_features: int, num_classes: int, dropout: float = 0.5) -> nn.Sequential:
    """The course's richer head: BatchNorm1d, Linear, ReLU, BatchNorm1d, Dropout, Linear."""
    hidden = in_features * 2
    return nn.Sequential(
        nn.BatchNorm1d(in_features),
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.BatchNorm1d(hidden),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


_MARK = "_vislab_heads"  # set by swap_head: the names of the heads it put in


def head_names(model: nn.Module) -> list[str]:
    """Dotted names of the modules that produce the logits: one, or two for distilled timm models (DeiT,
    LeViT: `head` and `head_dist`, averaged at inference)."""
    marked = getattr(model, _MARK, None)
    if marked:
        return list(marked)
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("classifier"):
        names = cfg["classifier"]
        names = [names] if isinstance(names, str) else list(names)
        present = [n for n in names if _exists(model, n)]
        if present:
            return present
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:  # SqueezeNet: a 1x1 convolution to num_classes channels, then global pooling
        n = getattr(model, "num_classes", None)
        last = next((name for name, m in reversed(list(model.named_modules())) if isinstance(m, nn.Conv2d)
                     and m.kernel_size == (1, 1) and m.out_channels == n), None)
    if last is None:
        raise ValueError(f"{type(model).__name__} has no linear classifier to replace")
    return [last]


def head_name(model: nn.Module) -> str:
    """Dotted name of the (first) module that produces the logits."""
    return head_names(model)[0]


def _exists(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def in_features(head: nn.Module) -> int:
    """Width of the features a head receives (works for a Linear and for our MLP head)."""
    for module in head.modules():
        if isinstance(module, nn.Linear):
            return module.in_features
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise ValueError(f"cannot tell the input width of {type(head).__name__}")


def num_outputs(model: nn.Module) -> int:
    head = get_module(model, head_name(model))
    linears = [m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not linears:  # a timm model built as a feature extractor (num_classes=0): no classes yet
        return 0
    last = linears[-1]
    return last.out_features if isinstance(last, nn.Linear) else last.out_channels


def attach_head(model: nn.Module, num_classes: int, kind: str = "linear") -> nn.Module:
    """`model` with a fresh `kind` head of `num_classes` outputs: the one place every job, reload and page
    gets its head. Linear and MLP heads replace the classifier in place (the same object comes back); a head
    that needs more than the pooled vector may wrap the model, so callers use what this returns."""
    swap_head(model, num_classes, kind)
    return model


def swap_head(model: nn.Module, num_classes: int, kind: str = "linear") -> str:
    """Replace the classifier in place with a fresh `kind` head of `num_classes` outputs; returns its name."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"head must be one of {', '.join(HEAD_KINDS)}, not '{kind}'")
    if num_classes < 1:
        raise ValueError("a head needs at least one output")
    if hasattr(model, "reset_classifier") and hasattr(model, "pretrained_cfg"):
        model.reset_classifier(num_classes)  # timm's own way: keeps its pooling choice, resets every head
        names = head_names(model)
        if kind == "mlp":
            for name in names:
                set_module(model, name, mlp_head(in_features(get_module(model, name)), num_classes))
    else:
        names = head_names(model)[:1]
        old = get_module(model, names[0])
        width = in_features(old)
        if isinstance(old, nn.Conv2d):  # a convolutional classifier (SqueezeNet) stays one
            if kind == "mlp":
                raise ValueError(f"{type(model).__name__} classifies with a 1x1 convolution: use the linear head")
            new = nn.Conv2d(width, num_classes, 1)
        else:
            new = nn.Linear(width, num_classes) if kind == "linear" else mlp_head(width, num_classes)
        set_module(model, names[0], new)
    object.__setattr__(model, _MARK, list(names))  # the MLP's own last Linear must not be taken for the head
    return names[0]
