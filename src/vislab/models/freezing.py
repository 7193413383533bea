"""Freeze plans: which stages train, BatchNorm modes, the course's strategy presets, and applying them.

A FreezePlan says, per stage (`vislab.models.stages`: real module names such as `layer4` or `blocks.3`), whether
its parameters train and how its BatchNorm layers behave:

  train   running stats update on every training batch, affine (gamma, beta) trains with the stage
  eval    running stats frozen (the layer normalises with them even in model.train()), affine may train
  frozen  running stats and affine both frozen

Dropout and stochastic depth inside a frozen stage are off (a frozen stage is a fixed feature extractor,
as Keras' `base_model(x, training=False)`); in a trained stage they work as usual.

`eval` and `frozen` are kept by a forward pre-hook that puts the layer in eval mode right before it runs,
so they survive `model.train()` (calling `.eval()` on a layer once is undone by the next `model.train()`).
The hook keeps module types and state_dict keys unchanged, so saved runs load into a plain model; timm's
`freeze(..., include_bn_running_stats=True)` would swap in FrozenBatchNorm2d and change both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch.nn as nn

from vislab.models.stages import HEAD, stage_of_modules, stages

BN_MODES = ("train", "eval", "frozen")
STRATEGIES = ("head", "partial", "surgical", "full", "two-phase", "scratch")

def is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)




@dataclass
class FreezePlan:
    trainable: dict[str, bool]  # stage name -> parameters train
    bn: dict[str, str]  # stage name -> "train" | "eval" | "frozen"
    modules: dict[str, bool] = field(default_factory=dict)  # single-module overrides, applied after stages

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FreezePlan:
        return cls(dict(d["trainable"]), dict(d["bn"]), dict(d.get("modules", {})))


def plan_for(model: nn.Module, thawed: set[str] | None = None, bn_thawed: str = "train",
             bn_frozen: str = "frozen") -> FreezePlan:
    """A plan with the `thawed` stages training (all when None) and given BN modes for both kinds."""
    names = [s.name for s in stages(model)]
    thawed = set(names) if thawed is None else set(thawed) | {HEAD}
    trainable = {n: n in thawed for n in names}
    bn = {n: (bn_thawed if trainable[n] else bn_frozen) for n in names}
    bn[HEAD] = "train" if trainable[HEAD] else bn_frozen  # the new head's own BN (MLP head) starts empty
    return FreezePlan(trainable, bn)


def preset(model: nn.Module, strategy: str, thaw_last: int = 1, bn: str | None = None) -> list[FreezePlan]:
    """The course's strategies as plans, one per training phase.

    head      train only the new head;                  partial   head plus the last `thaw_last` stages;
    surgical  head plus one stage only, the `thaw_last`-th counted from the head (Lee et al. 2023: tuning
              one block, the rest frozen; 1 is the last stage, the number of stages the stem);
    full      everything at once;                        two-phase head first, then everything;
    scratch   everything, from random init (the caller builds the model with random weights).
    `bn` is the BatchNorm mode of thawed pretrained stages (default `eval`; `train` for scratch).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not '{strategy}'")
    if bn is not None and bn not in BN_MODES:
        raise ValueError(f"BatchNorm mode must be one of {', '.join(BN_MODES)}, not '{bn}'")
    body = [s.name for s in stages(model) if s.name != HEAD]
    if strategy == "scratch":
        return [plan_for(model, None, bn or "train")]
    bn = bn or "eval"
    head_only = plan_for(model, set(), bn)
    if strategy == "head":
        return [head_only]
    if strategy == "partial":
        if thaw_last < 1:
            raise ValueError("thaw-last must be at least 1 for the partial strategy")
        return [plan_for(model, set(body[-thaw_last:]), bn)]
    if strategy == "surgical":  # like partial, a count past the stem means the stem (a lab's saved choice
        if thaw_last < 1:  # stays usable on a model with fewer stages)
            raise ValueError("thaw-last must be at least 1 for the surgical strategy")
        return [plan_for(model, {body[-min(thaw_last, len(body))]}, bn)]
    if strategy == "full":
        return [plan_for(model, None, bn)]
    return [head_only, plan_for(model, None, bn)]  # two-phase


def is_stochastic(module: nn.Module) -> bool:
    """Dropout of any kind, timm's DropPath and DropBlock, torchvision's StochasticDepth."""
    kind = type(module).__name__
    return isinstance(module, nn.modules.dropout._DropoutNd) or "Drop" in kind or "StochasticDepth" in kind


def _still_hook(module: nn.Module, args) -> None:
    if module._vislab_still:
        module.training = False  # a frozen stage is a fixed feature extractor: no random drops in it


def _trains_here(name: str, stage_trains: bool, overrides: dict[str, bool]) -> bool:
    """Whether module `name` sits in trained code: its stage's setting, unless a single-module override
    on it or on a block that holds it says otherwise (the most specific override wins)."""
    for key in sorted(overrides, key=len):
        if name == key or name.startswith(key + "."):
            stage_trains = overrides[key]
    return stage_trains


def _bn_mode_hook(module: nn.Module, args) -> None:
    if module._vislab_bn_mode != "train":
        module.training = False  # normalise with the running stats and leave them alone


def apply(model: nn.Module, plan: FreezePlan, strict: bool = True) -> None:
    """Set requires_grad and BatchNorm modes in place. Idempotent; a new plan replaces the old one.
    `strict=False` skips stage names this version does not know (a run saved by an older vislab)."""
    found = stages(model)  # once: walking the model is most of what applying costs
    unknown = set(plan.trainable) - {s.name for s in found}
    if unknown and strict:
        raise ValueError(f"unknown stage(s) {', '.join(sorted(unknown))}")
    for stage in found:
        on = plan.trainable.get(stage.name, False)
        for root in stage.modules:
            model.get_submodule(root).requires_grad_(on)
        for p in stage.params:
            model.get_parameter(p).requires_grad_(on)
    for name, on in plan.modules.items():
        model.get_submodule(name).requires_grad_(on)
    owner = stage_of_modules(model, found)
    trainable = {stage.name: plan.trainable.get(stage.name, False) for stage in found}
    for name, module in model.named_modules():
        if is_stochastic(module):  # off in frozen stages, as Keras' base_model(x, training=False)
            if not hasattr(module, "_vislab_still"):
                module.register_forward_pre_hook(_still_hook)
            module._vislab_still = name in owner and not _trains_here(name, trainable[owner[name]], plan.modules)
            continue
        if not is_batchnorm(module):
            continue
        mode = plan.bn.get(owner.get(name, ""), "train")
        if not hasattr(module, "_vislab_bn_mode"):
            module.register_forward_pre_hook(_bn_mode_hook)
        module._vislab_bn_mode = mode
        if mode == "frozen":
            module.requires_grad_(False)


def bn_mode(module: nn.Module) -> str:
    return getattr(module, "_vislab_bn_mode", "train")


@dataclass
class FreezeReport:
    trainable_params: int
    frozen_params: int
    trainable_tensors: list[str]  # parameter names that the optimizer will update
    moving_bn_buffers: list[str]  # BatchNorm running stats that training will change
    stilled: list[str] = field(default_factory=list)  # dropout / stochastic depth switched off (frozen stages)

    @property
    def total(self) -> int:
        return self.trainable_params + self.frozen_params


def report(model: nn.Module) -> FreezeReport:
    """What training will change: parameters with requires_grad, and BN layers in `train` mode."""
    trainable = [(n, p.numel()) for n, p in model.named_parameters() if p.requires_grad]
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    moving = [f"{n}.running_mean, {n}.running_var" for n, m in model.named_modules()
              if is_batchnorm(m) and m.track_running_stats and bn_mode(m) == "train"]
    stilled = [n for n, m in model.named_modules() if getattr(m, "_vislab_still", False)]
    return FreezeReport(sum(c for _, c in trainable), frozen, [n for n, _ in trainable], moving, stilled)


def stage_summary(model: nn.Module) -> list[dict]:
    """One row per stage: name, modules, parameters, trainable parameters, BN layers and their modes."""
    rows = []
    for stage in stages(model):
        params = [model.get_parameter(p) for p in stage.params]
        bns = []
        for root in stage.modules:
            params += list(model.get_submodule(root).parameters())
            bns += [m for m in model.get_submodule(root).modules() if is_batchnorm(m)]
        rows.append({
            "stage": stage.name,
            "modules": stage.modules or stage.params,
            "params": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad),
            "bn_layers": len(bns),
            "bn_modes": sorted({bn_mode(m) for m in bns}),
        })
    return rows
