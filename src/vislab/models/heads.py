"""Finding a model's classifier and swapping it for a new one with N outputs.

timm models know their classifier (`pretrained_cfg["classifier"]`, `reset_classifier`); for torchvision
models the classifier is the last `nn.Linear` in definition order (`fc`, `classifier.1`, `heads.head`, ...).

The `attention` head is a small Vision Transformer on top of a CNN (a hybrid): the backbone's last feature
map (B, C, H, W) becomes H*W tokens, which a class token reads through one or two self-attention blocks.
It needs the map before global pooling. timm CNNs keep their pooling in a module (`reset_classifier(n,
global_pool='')` makes it an identity), so the head goes in place of the classifier. torchvision models
pool functionally (mobilenet_v2's `adaptive_avg_pool2d` in `forward`): the model is traced with torch.fx,
its top-level children as leaves, and the graph is cut at the last spatial map, which feeds the head; the
result is a GraphModule whose backbone modules keep their names (`features.18`), so freeze plans, CAM
layers and run files read the same.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from vislab._hooks import forward_with_hooks
from vislab._modes import inference

HEAD_KINDS = ("linear", "mlp", "attention")
ATTENTION_WIDTH = 128  # token width of the attention head (the backbone's channels are projected to it)
ATTENTION_HEADS = 4  # attention heads per block (32 channels each)
ATTENTION_DEPTH = 1  # transformer blocks: one, so the class token reads the grid only through the maps shown
PROBE_SIZE = 224  # the image size the head's position grid is laid out for (a torchvision model's own size)


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


class AttentionHead(nn.Module):
    """Self-attention over a feature map, classified from a class token.

    (B, C, H, W) -> H*W tokens, projected to `width`; a learned 2-D position embedding (laid out on the
    probe size's grid, resized by bicubic interpolation for other grids: at its own grid that is exact);
    a class token in front; `depth` pre-norm timm transformer blocks; a final norm; a linear layer on the
    class token. The blocks' attention (`blocks.i.attn`) is timm's, so `vislab.views.attention` reads its maps.
    """

    num_prefix_tokens = 1  # the class token comes before the H*W grid tokens

    def __init__(self, in_channels: int, num_classes: int, grid: tuple[int, int] = (7, 7),
                 width: int = ATTENTION_WIDTH, depth: int = ATTENTION_DEPTH, num_heads: int = ATTENTION_HEADS,
                 mlp_ratio: float = 2.0):
        super().__init__()
        from timm.models.vision_transformer import Block

        self.proj = nn.Linear(in_channels, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, width, *grid))  # (1, D, gh, gw)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))  # (1, 1, D)
        # no q/k/v bias: a key bias shifts every logit of a row alike (softmax ignores it), so its gradient is
        # float noise that Adam would scale up to full steps; a value bias is the output projection's bias
        self.blocks = nn.Sequential(*[Block(width, num_heads, mlp_ratio, qkv_bias=False) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        b, _, h, w = x.shape
        tokens = self.proj(x.flatten(2).transpose(1, 2))  # (B, H*W, D)
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic", align_corners=False)  # (1, D, H, W)
        tokens = tokens + pos.flatten(2).transpose(1, 2)  # (B, H*W, D)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)  # (B, 1 + H*W, D)
        tokens = self.norm(self.blocks(tokens))
        return self.fc(tokens[:, 0])  # (B, classes)


def attention_head_names(model: nn.Module) -> list[str]:
    """Dotted names of the model's attention heads (none for other heads)."""
    return [n for n, m in model.named_modules() if isinstance(m, AttentionHead)]


_MARK = "_vislab_heads"  # set by attach_head: the names of the heads it put in


def head_names(model: nn.Module) -> list[str]:
    """Dotted names of the modules that produce the logits: one, or two for distilled timm models (DeiT,
    LeViT: `head` and `head_dist`, averaged at inference)."""
    marked = getattr(model, _MARK, None)
    if marked:
        return list(marked)
    attention = attention_head_names(model)  # found by type: a deep copy of a GraphModule drops the mark
    if attention:
        return attention
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
    gets its head. Linear and MLP heads replace the classifier in place (the same object comes back); the
    attention head needs the map before pooling: in place for a timm CNN, a traced GraphModule with the same
    module names for a torchvision one. Callers use what this returns."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"head must be one of {', '.join(HEAD_KINDS)}, not '{kind}'")
    if num_classes < 1:
        raise ValueError("a head needs at least one output")
    if kind == "attention":
        return _attach_attention(model, num_classes)
    _replace_classifier(model, num_classes, kind)
    return model


class AttentionHeadError(ValueError):
    """The model gives no spatial feature map for the attention head (a ViT, an MLP-Mixer, ...)."""

    def __init__(self, model: nn.Module, why: str):
        super().__init__(f"the attention head reads a CNN's last feature map, and {type(model).__name__} "
                         f"{why}: use a convolutional backbone (mobilenet_v2, tf_efficientnet_lite0, resnet18) "
                         "or the linear head")


def _probe(model: nn.Module) -> torch.Tensor:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = tuple(cfg.get("input_size") or (3, PROBE_SIZE, PROBE_SIZE))
    param = next(model.parameters(), None)
    return torch.zeros(1, *size, device=param.device if param is not None else "cpu")  # (1, 3, H, W)


def _has_self_attention(model: nn.Module) -> bool:
    return any(isinstance(m, nn.MultiheadAttention) or (hasattr(m, "fused_attn") and hasattr(m, "qkv"))
               for m in model.modules())


def _refusal(model: nn.Module) -> AttentionHeadError | None:
    if attention_head_names(model):
        return AttentionHeadError(model, "has an attention head already")
    if _has_self_attention(model):
        return AttentionHeadError(model, "attends with its own self-attention blocks (tokens, not a feature map)")
    return None


def attention_head_refusal(model: nn.Module) -> str | None:
    """Why `model` cannot take the attention head (a ViT attends already), or None when it can try."""
    refusal = _refusal(model)
    return str(refusal) if refusal else None


def _attach_attention(model: nn.Module, num_classes: int) -> nn.Module:
    refusal = _refusal(model)
    if refusal:
        raise refusal
    if hasattr(model, "reset_classifier") and hasattr(model, "pretrained_cfg"):
        return _attach_attention_timm(model, num_classes)
    return _attach_attention_fx(model, num_classes)


class _Seen(Exception):
    """Raised by the probe's hook once the classifier's input shape is known."""


def _attach_attention_timm(model: nn.Module, num_classes: int) -> nn.Module:
    """timm: the classifier's pooling becomes an identity; the head takes the classifier's place."""
    try:
        model.reset_classifier(num_classes, global_pool="")
    except (TypeError, ValueError, AssertionError) as exc:
        raise AttentionHeadError(model, f"cannot drop its global pooling ({str(exc).splitlines()[0]})") from None
    name = head_names(model)[0]
    seen: list[tuple] = []

    def record(module, args):
        seen.append(tuple(args[0].shape))
        raise _Seen  # the old classifier cannot take the map: the forward stops here

    try:
        forward_with_hooks(model, [], _probe(model), pre=[(model.get_submodule(name), record)])
    except _Seen:
        pass
    if not seen or len(seen[0]) != 4 or seen[0][2] * seen[0][3] < 1:
        raise AttentionHeadError(model, f"hands its classifier {seen[0] if seen else 'nothing'}, not a (B, C, H, W) map")
    _, channels, h, w = seen[0]
    set_module(model, name, AttentionHead(channels, num_classes, (h, w)))
    object.__setattr__(model, _MARK, [name])
    return model


class _TopLevelTracer(fx.Tracer):
    """Traces only the root's forward: its direct children stay whole (`features`, `layer4`, `fc`)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return "." not in qualname or super().is_leaf_module(m, qualname)


def _attach_attention_fx(model: nn.Module, num_classes: int) -> nn.Module:
    """torchvision: the root's forward traced; the classifier's call now takes the last spatial map."""
    from torch.fx.passes.shape_prop import ShapeProp

    root = head_names(model)[0].split(".")[0]  # mobilenet_v2: `classifier` (Dropout, Linear); resnet: `fc`
    try:
        graph = _TopLevelTracer().trace(model)
    except Exception as exc:  # fx raises assorted errors on data-dependent control flow
        raise AttentionHeadError(model, f"cannot be traced ({str(exc).splitlines()[0][:160]})") from None
    gm = fx.GraphModule(model, graph, class_name=f"{type(model).__name__}WithAttention")
    with inference(gm):
        ShapeProp(gm).propagate(_probe(model))
    nodes = list(gm.graph.nodes)
    calls = [i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == root]
    if len(calls) != 1:
        raise AttentionHeadError(model, f"calls its classifier `{root}` {len(calls)} times")

    def spatial(n: fx.Node) -> bool:
        meta = n.meta.get("tensor_meta")
        shape = getattr(meta, "shape", None)
        return shape is not None and len(shape) == 4 and shape[2] * shape[3] > 1

    maps = [i for i in range(calls[0]) if spatial(nodes[i])]
    if not maps:
        raise AttentionHeadError(model, "has no spatial map before its classifier")
    feature = nodes[maps[-1]]
    between = [n.target for n in nodes[maps[-1] + 1:calls[0]]
               if n.op == "call_module" and any(True for _ in gm.get_submodule(n.target).parameters())]
    if between:  # a ViT's patch embedding is a map too, but its encoder runs after it
        raise AttentionHeadError(model, f"runs {', '.join(between)} between its last feature map and its classifier")
    _, channels, h, w = feature.meta["tensor_meta"].shape
    head = nodes[calls[0]]
    head.args, head.kwargs = (feature,), {}
    setattr(gm, root, AttentionHead(channels, num_classes, (h, w)))
    gm.graph.eliminate_dead_code()  # the pooling and flatten that fed the old classifier
    gm.delete_all_unused_submodules()
    gm.recompile()
    object.__setattr__(gm, _MARK, [root])
    return gm


def _replace_classifier(model: nn.Module, num_classes: int, kind: str) -> None:
    """A linear or MLP head in place of the classifier (of every classifier of a distilled timm model)."""
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
