"""A model's stages: the layer groups that freezing, the Freeze page and the CLI name, found from the model.

A stage is a list of real module names (`layer4`, `features.18`, `blocks.3`, `features.0-6` for the
convolutions up to VGG's first pooling layer), found by name (timm's and torchvision's `features`, `blocks`,
`stages`, `layers` containers), by size (a container holding most of the network is split into its
children) and by pooling (VGG's flat `features`). Normalisation-only groups join a neighbour, and the new
classifier is the last stage, `head`. What to do with the stages (freeze plans, BatchNorm modes) is
`freezing`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from vislab.models.heads import head_names

HEAD = "head"  # the stage name of the new classifier, whatever its module is called

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass
class Stage:
    name: str  # what the UI and CLI show
    modules: list[str]  # real dotted module names ("" for parameters that sit on the root module)
    params: list[str] = field(default_factory=list)  # root-level parameter names (ViT cls_token, pos_embed)


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


_STAGE_CONTAINERS = {"features", "blocks", "stages", "layers"}  # timm's and torchvision's names


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _expandable(name: str, module: nn.Module, share: float, by_name: bool) -> bool:
    """Containers whose children are the natural stages: `features.3`, `blocks.5`, `stages.2` by name, and
    any container holding most (> 80%) of the network (torchvision's ViT `encoder`, RegNet's `trunk_output`),
    so that "the last stage" is never nearly the whole model."""
    if sum(_has_params(c) for c in module.children()) < 2:
        return False
    if by_name and name in _STAGE_CONTAINERS and isinstance(module, (nn.Sequential, nn.ModuleList)):
        return True
    return share > 0.8


def _flat(module: nn.Module) -> bool:
    """A VGG-style run of single layers (no child is itself a block of layers)."""
    return not any(sum(1 for _ in c.children()) for c in module.children())


def _norm_only(model: nn.Module, stage: Stage) -> bool:
    """A stage whose parameters all sit in normalisation layers (a final LayerNorm, a stem's BatchNorm, ResMLP's
    Affine)."""
    if stage.params or not stage.modules:
        return False
    owners = [m for root in stage.modules for m in model.get_submodule(root).modules()
              if any(True for _ in m.parameters(recurse=False))]
    return bool(owners) and all(any(k in type(m).__name__ for k in ("Norm", "Affine")) for m in owners)


def _merge_norms(model: nn.Module, body: list[Stage]) -> list[Stage]:
    """A norm-only stage joins the stage before it (the stem's conv, the last block): thawing the last stage
    must thaw a real block, not 1.5k parameters of LayerNorm."""
    out: list[Stage] = []
    pending: Stage | None = None  # a norm-only stage before any real one: joins the next
    for stage in body:
        if _norm_only(model, stage):
            if out and out[-1].modules:
                prev = out[-1]
                out[-1] = Stage(f"{prev.name}+{stage.name}", prev.modules + stage.modules, prev.params)
            else:
                pending = stage if pending is None else Stage(f"{pending.name}+{stage.name}",
                                                              pending.modules + stage.modules)
            continue
        if pending is not None and stage.modules:
            stage = Stage(f"{pending.name}+{stage.name}", pending.modules + stage.modules, stage.params)
            pending = None
        out.append(stage)
    if pending is not None:
        out.append(pending)
    return out


def _group_by_pooling(prefix: str, module: nn.Module) -> list[Stage]:
    """VGG / AlexNet `features`: flat conv, bn, relu layers, cut after each pooling layer."""
    stages, current = [], []
    children = list(module.named_children())
    for name, child in children:
        current.append(name)
        if isinstance(child, _POOLS) or name == children[-1][0]:
            mods = [f"{prefix}{n}" for n in current if _has_params(module.get_submodule(n))]
            if mods:
                label = f"{prefix}{current[0]}-{current[-1]}" if len(current) > 1 else f"{prefix}{current[0]}"
                stages.append(Stage(label, mods))
            current = []
    return stages


def stages(model: nn.Module) -> list[Stage]:
    """The model's stages in definition order, the new head last (named `head`)."""
    heads = head_names(model)
    total = max(1, _n_params(model) - sum(_n_params(model.get_submodule(h)) for h in heads))
    out: list[Stage] = []
    root_params = [n for n, _ in model.named_parameters(recurse=False)]
    if root_params:
        out.append(Stage("+".join(root_params), [], root_params))

    def visit(prefix: str, module: nn.Module, by_name: bool, depth: int) -> None:
        for name, child in module.named_children():
            full = prefix + name
            if full in heads or not _has_params(child):
                continue
            share = _n_params(child) / total
            if any(h.startswith(full + ".") for h in heads):  # the container that holds the head: its other parts
                visit(full + ".", child, by_name, depth)
            elif depth < 3 and _expandable(name, child, share, by_name):
                own = [f"{full}.{n}" for n, _ in child.named_parameters(recurse=False)]
                if own:  # a container's own tensors (torchvision ViT's encoder.pos_embedding)
                    out.append(Stage("+".join(own), [], own))
                if _flat(child) and any(isinstance(c, _POOLS) for c in child.children()):  # VGG `features`
                    out.extend(_group_by_pooling(full + ".", child))
                else:  # one stage per child: `blocks.3`, not deeper, unless a child is most of the network
                    visit(full + ".", child, share > 0.8 and name not in _STAGE_CONTAINERS, depth + 1)
            else:
                out.append(Stage(full, [full]))

    visit("", model, True, 0)
    return _merge_norms(model, out) + [Stage(HEAD, list(heads))]


def stage_of_modules(model: nn.Module, found: list[Stage] | None = None) -> dict[str, str]:
    """Every module name -> the stage that holds it (`found`: the model's `stages`, when already known)."""
    owner = {}
    for stage in stages(model) if found is None else found:
        for root in stage.modules:
            for sub, _ in model.get_submodule(root).named_modules():
                owner[f"{root}.{sub}" if sub else root] = stage.name
    return owner
