"""Class activation maps: classic CAM (exact, from a GAP + linear head) and the grad-cam package's methods.

Gradient methods run fast here: the part of the network before the target layer runs without autograd,
its output becomes a leaf tensor, and the backward pass goes only from the logits down to it (the grad-cam
package called the usual way backpropagates through the whole network to the input). Several gradient
methods on the same images share one forward and backward pass: each method only re-weights the same
activations and gradients.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_grad_cam import (AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM,
                              XGradCAM)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from vislab.models import catalog
from vislab.models.heads import attention_head_names, head_name
from vislab._hooks import forward_with_hooks, temporary_hooks
from vislab._modes import inference, training_mode
from vislab.views.base import ViewNotApplicable, normalise_maps

METHODS = {
    "GradCAM": GradCAM, "GradCAM++": GradCAMPlusPlus, "XGradCAM": XGradCAM, "HiResCAM": HiResCAM,
    "LayerCAM": LayerCAM, "EigenCAM": EigenCAM, "ScoreCAM": ScoreCAM, "AblationCAM": AblationCAM,
}
SLOW = ("ScoreCAM", "AblationCAM")  # one forward pass per channel of the target layer, per image
CLASSIC = "CAM (classic)"  # classic CAM's name next to METHODS (its layer is fixed: the maps before GAP)


class CamNotApplicable(ViewNotApplicable):
    """This CAM cannot be computed for this model; the message says why and what would work."""

    def __init__(self, why: str):
        super().__init__("class activation maps", None, why=why)


@dataclass
class CamResult:
    method: str
    layer: str
    maps: np.ndarray  # (B, H, W) in [0, 1], at the model's input size
    targets: list[int]  # the class each map explains
    seconds: float


@dataclass
class Explanation:
    """What `explain` found for one model and a batch of images."""

    topk: list[list[tuple[str, float]]]  # per image: the model's top 5 (class name, probability)
    classes: list[int]  # per image: the class its maps explain
    results: list[CamResult]  # one per (layer, method) that ran, layers outer; classic CAM only once
    road: list[np.ndarray | None]  # per result: grad-cam's ROAD score per image, None when not asked for
    errors: list[tuple[str, str]]  # ("method · layer", why) for each that could not run


def is_vit(model: nn.Module) -> bool:
    """A ViT whose blocks pass (B, N, C) token sequences: timm's, or torchvision's (`class_token`, `encoder`)."""
    timm_vit = hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")
    return timm_vit or (hasattr(model, "class_token") and hasattr(model, "encoder") and hasattr(model, "patch_size"))


def is_nhwc(model: nn.Module) -> bool:
    """timm models whose feature maps are (B, H, W, C): Swin and its relatives."""
    return str(getattr(model, "output_fmt", "NCHW")).upper() == "NHWC"


def _tv_input(model: nn.Module):
    size = getattr(model, "image_size", None)  # torchvision's ViT is built for one size
    return (3, size, size) if isinstance(size, int) else None


def _nhwc_to_nchw(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2) if t.ndim == 4 else t


def input_size(model: nn.Module) -> tuple[int, int, int]:
    """The size to probe a model at: its own (timm's config; a resampled ViT's patch_embed), else 224."""
    embed = getattr(model, "patch_embed", None)
    if embed is not None and getattr(embed, "img_size", None) is not None:
        return (3, *tuple(int(v) for v in embed.img_size))
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") or _tv_input(model) or (3, 224, 224)
    return tuple(int(v) for v in size)


def vit_reshape(model: nn.Module):
    """Token sequence (B, N, C) -> (B, C, gh, gw), from the model's own prefix tokens and patch grid."""
    prefix = int(getattr(model, "num_prefix_tokens", 1))  # torchvision: one class token

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, prefix:, :]  # (B, gh*gw, C)
        n = patches.shape[1]
        gh, gw = getattr(getattr(model, "patch_embed", None), "grid_size", (int(n ** 0.5), int(n ** 0.5)))
        if gh * gw != n:  # dynamic image size: a square grid of the tokens present
            gh = gw = int(round(n ** 0.5))
        return patches.reshape(patches.shape[0], gh, gw, -1).permute(0, 3, 1, 2)  # (B, C, gh, gw)
    return reshape


def layer_choices(model: nn.Module) -> list[str]:
    """Layers a CAM can target: convolutions and norms with spatial maps, or ViT blocks' norm1."""
    if is_vit(model):  # each block's first norm: its input tokens, as pytorch-grad-cam's ViT example
        return [n for n, m in model.named_modules()
                if (n.startswith("blocks.") and n.endswith(".norm1")) or re.fullmatch(r"encoder\.layers\.[^.]+\.ln_1", n)]
    if is_nhwc(model):  # Swin: each stage's output and the final norm, (B, H, W, C)
        return [n for n, m in model.named_modules() if re.fullmatch(r"(layers|stages)\.\d+|norm", n)]
    head = head_name(model)
    return [n for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.GroupNorm))
            or type(m).__name__ in ("LayerNorm2d", "BatchNormAct2d")
            if not n.startswith(head)]


def default_layer(model: nn.Module, name: str | None = None) -> str:
    entry = catalog.lookup(name) if name else None
    if entry:
        try:
            model.get_submodule(entry.cam_layer)
            return entry.cam_layer
        except AttributeError:
            pass
    choices = layer_choices(model)
    if is_vit(model) and choices:
        return choices[-1]
    return _last_spatial_layer(model, input_size(model))


def early_layer_note(model: nn.Module, layer: str) -> str | None:
    """A warning when a CAM layer sits early in a network (LeViT, MLP-Mixer: maps only in the stem, tokens
    after): Grad-CAM there explains edges and textures, not the model's decision."""
    if is_vit(model):
        return None
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}  # definition order
    at = max((i for n, i in order.items() if n == layer or n.startswith(layer + ".")), default=None)
    sizes = [(order[n.rpartition(".")[0]], p.numel()) for n, p in model.named_parameters()]
    total = sum(c for _, c in sizes)
    if at is None or not total:
        return None
    if sum(c for i, c in sizes if i <= at) / total < 0.25:
        return (f"`{layer}` is this model's last layer with spatial feature maps, and it comes early (the model "
                "works on tokens after it): its maps show early features, not what decides the class.")
    return None


def _last_spatial_layer(model: nn.Module, input_size) -> str:
    """The last module (in execution order) whose output is a (B, C, H, W) map."""
    order: list[tuple[str, torch.Tensor]] = []  # (module, output) as each module finishes
    hw = (1, 2) if is_nhwc(model) else (2, 3)

    def spatial(out) -> bool:
        return isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[hw[0]] * out.shape[hw[1]] > 1

    heads = tuple(f"{h}." for h in attention_head_names(model))  # an attention head's (B, heads, N, d) tensors
    hooks = [(m, lambda mod, a, out, n=n: order.append((n, out)) if spatial(out) else None)
             for n, m in model.named_modules() if n and not f"{n}.".startswith(heads)]  # are tokens, not maps
    forward_with_hooks(model, hooks, torch.zeros(1, *input_size, device=next(model.parameters()).device))
    if not order:
        raise CamNotApplicable("the model has no layer with spatial feature maps")
    last = order[-1][1]
    same = [n for n, out in order if out is last]  # in-place ops make several modules return one tensor
    modules = dict(model.named_modules())
    leaves = [n for n in same if not any(True for _ in modules[n].children())
              and not isinstance(modules[n], nn.Identity)]
    return leaves[-1] if leaves else same[-1]  # the last real layer to touch it (after a residual add + act)


@contextlib.contextmanager
def _prefix_without_grad(model: nn.Module, layer: nn.Module):
    """Run everything before `layer` without autograd; its output becomes the leaf the backward stops at."""
    previous = torch.is_grad_enabled()

    def stop_grad(mod, args):
        torch.set_grad_enabled(False)

    def make_leaf(mod, args, out):
        torch.set_grad_enabled(True)  # the rest of the forward records the graph
        leaf = out.detach().requires_grad_(True)
        return leaf.clone()  # a non-leaf copy, so an in-place op after the layer (ReLU) stays legal

    try:  # prepend: the leaf is made before grad-cam's own hook on the layer reads the activation
        with temporary_hooks([(layer, make_leaf)], pre=[(model, stop_grad)], prepend=True):
            yield
    finally:
        torch.set_grad_enabled(previous)


def _targets(classes: list[int]):
    return [ClassifierOutputTarget(int(k)) for k in classes]


def run(model: nn.Module, x: torch.Tensor, methods: list[str], layer: str, classes: list[int],
        on_progress=None, should_stop=None) -> list[CamResult]:
    """Maps of each method for a batch `x` (B, 3, H, W), each image explained for its class in `classes`.

    Gradient methods share one forward + backward pass. Slow methods (ScoreCAM, AblationCAM) run one image
    at a time, calling `on_progress(method, i, B)` between images and stopping early if `should_stop()`.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown CAM method(s): {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if len(classes) != len(x):
        raise ValueError("one target class per image is needed")
    target_layer = model.get_submodule(layer)
    reshape = vit_reshape(model) if is_vit(model) else (_nhwc_to_nchw if is_nhwc(model) else None)
    results: list[CamResult] = []
    with training_mode(model, False):
        shared = None  # (activations, gradients) of the first gradient method, reused by the others
        for name in methods:
            cls = METHODS[name]
            start = time.perf_counter()
            with cls(model=model, target_layers=[target_layer], reshape_transform=reshape) as cam:
                if name in SLOW:
                    cam.batch_size = 32
                    maps = []
                    for i in range(len(x)):
                        if should_stop and should_stop():
                            break
                        if on_progress:
                            on_progress(name, i, len(x))
                        maps.append(cam(x[i:i + 1], targets=_targets(classes[i:i + 1]))[0])
                    maps = np.stack(maps) if maps else np.zeros((0, *x.shape[-2:]), np.float32)
                elif cam.uses_gradients and shared is not None:
                    cam.activations_and_grads.activations = list(shared[0])  # copies: release() clears lists
                    cam.activations_and_grads.gradients = list(shared[1])
                    maps = cam.aggregate_multi_layers(cam.compute_cam_per_layer(x, _targets(classes), False))
                elif cam.uses_gradients:
                    with _prefix_without_grad(model, target_layer):
                        maps = cam(x, targets=_targets(classes))
                    shared = (list(cam.activations_and_grads.activations),
                              list(cam.activations_and_grads.gradients))
                else:
                    with torch.no_grad():
                        maps = cam(x, targets=_targets(classes))
            model.zero_grad(set_to_none=True)  # grad-cam's backward leaves .grad on parameters
            results.append(CamResult(name, layer, normalise_maps(maps), list(classes[:len(maps)]),
                                     time.perf_counter() - start))  # grad-cam scales them too; a flat map -> 0
    return results


def _final_linear(model: nn.Module) -> nn.Linear:
    head = model.get_submodule(head_name(model))
    if isinstance(head, nn.Linear):
        return head
    raise CamNotApplicable(
        f"the classifier is a {type(head).__name__}, not one linear layer: classic CAM needs global average "
        "pooling followed by a single linear layer (try Grad-CAM, or resnet18 / mobilenet_v2 / efficientnet_b0 "
        "with a linear head)")


@torch.no_grad()
def classic(model: nn.Module, x: torch.Tensor, classes: list[int], layer: str | None = None) -> CamResult:
    """Classic CAM: sum_k w_ck A_k over the last feature maps A with the class's linear weights w_c.

    Exact only when the logits are exactly linear(GAP(A)); this is checked on the batch itself, and a model
    for which it does not hold (an MLP head, a norm after pooling, attention pooling) is refused.
    """
    start = time.perf_counter()
    linear = _final_linear(model)
    if is_vit(model):
        raise CamNotApplicable("a ViT classifies from its class token (or pooled tokens), not from pooled "
                               "feature maps, so there is no classic CAM; Grad-CAM on a block's tokens works")
    layer = layer or _last_spatial_layer(model, tuple(x.shape[1:]))
    feats: list[torch.Tensor] = []
    logits = forward_with_hooks(model, [(model.get_submodule(layer), lambda m, a, out: feats.append(out))], x)  # (B, K)
    a = feats[-1].float()  # (B, C, h, w)
    if is_nhwc(model) and a.ndim == 4:  # Swin: (B, h, w, C)
        a = a.permute(0, 3, 1, 2)
    if a.ndim != 4 or a.shape[1] != linear.in_features:
        raise CamNotApplicable(f"layer '{layer}' does not feed the classifier directly (classic CAM needs the "
                               "feature maps right before global average pooling)")
    implied = F.linear(a.mean(dim=(2, 3)), linear.weight, linear.bias)  # (B, K) what GAP + linear gives
    if not torch.allclose(implied, logits.float(), rtol=1e-3, atol=1e-3):
        raise CamNotApplicable(
            "the head is not global average pooling + one linear layer (the logits differ from linear(GAP(A))), "
            "so classic CAM would not be exact; use Grad-CAM, or a model such as resnet18 or mobilenet_v2")
    w = linear.weight[torch.as_tensor(classes)]  # (B, C)
    cams = torch.einsum("bc,bchw->bhw", w, a)  # (B, h, w)
    up = F.interpolate(cams[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    maps = normalise_maps(up.clamp(min=0).cpu().numpy())
    return CamResult("CAM", layer, maps, list(classes), time.perf_counter() - start)


def predict_topk(model: nn.Module, x: torch.Tensor, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (B, k), class indices (B, k)), model in eval mode."""
    with inference(model):
        probs = model(x).float().softmax(1)
    top = probs.topk(min(k, probs.shape[1]), dim=1)
    return top.values.cpu().numpy(), top.indices.cpu().numpy()


def road_score(model: nn.Module, x: torch.Tensor, maps: np.ndarray, classes: list[int]) -> np.ndarray:
    """grad-cam's ROAD (remove and debias) combined score per image: higher means a more faithful map."""
    from pytorch_grad_cam.metrics.road import ROADCombined

    with inference(model):
        scores = ROADCombined(percentiles=[20, 40, 60, 80])(x, maps, _targets(classes), model)
    return np.asarray(scores, dtype=np.float32).reshape(-1)


def explain(model: nn.Module, x: torch.Tensor, class_names: list[str], methods: list[str], layers: list[str],
            target: str | None = None, classic_layer: str | None = None, road: bool = False,
            on_progress=None) -> Explanation:
    """The CAM page's job for one model: its top 5 for each image of `x` (B, 3, H, W), then each method's maps
    at each of `layers`, every image explained for `target` (a class name) or, without one (or when the
    model does not know that class), for its own top class.

    `methods` may include CLASSIC: it has one layer of its own (`classic_layer`, else the last spatial one),
    so it runs once, not once per layer. A method that does not apply to the model is listed in `errors`
    and the others still run. `road` adds grad-cam's ROAD faithfulness score per map.
    """
    probs, idx = predict_topk(model, x, 5)  # (B, 5) each
    if target is not None and target in class_names:
        classes = [class_names.index(target)] * len(x)
    else:
        classes = [int(i[0]) for i in idx]
    topk = [[(class_names[j], float(p)) for p, j in zip(pr, ix)] for pr, ix in zip(probs, idx)]
    out = Explanation(topk, classes, [], [], [])
    for n, layer in enumerate(layers):
        for method in methods:
            if method == CLASSIC and n:
                continue  # the same map again: classic CAM ignores the target layer
            try:
                if method == CLASSIC:
                    res = classic(model, x, classes, layer=classic_layer)
                else:
                    res = run(model, x, [method], layer, classes, on_progress=on_progress)[0]
            except (CamNotApplicable, ValueError, RuntimeError) as exc:
                out.errors.append((f"{method} · {layer}", str(exc)))
                continue
            out.results.append(res)
            out.road.append(road_score(model, x[:len(res.maps)], res.maps, classes) if road else None)
    return out
