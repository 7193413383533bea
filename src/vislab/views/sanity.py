"""Can this heatmap tell a trained model from a random one? The cascading-randomisation sanity check
(Adebayo et al. 2018, "Sanity checks for saliency maps").

A map that explains a model must change when the model's learned weights are replaced by random ones. The
check takes a **deep copy** of the model (the caller's model is never touched, not even its `.grad`),
computes the original maps, then re-initialises the model's own stages **top first** — the head, then the
last stage, ..., down to the stem (`models.stages`, the groups the Freeze page names) — cumulatively, and
after each step computes the maps again for the *same* target classes and compares each with its original:

- **Spearman rank correlation** (scipy) of the pixel values: does the map still rank the same pixels first?
- **SSIM** (scikit-image's `structural_similarity`, data range 1): does it still look the same?

A map whose correlation falls (below 0.5, the threshold `sentence` uses) depends on the learned weights; one
that stays high with every layer random shows the image (edges, contrast), not the model. Re-initialising
uses each module's own `reset_parameters()` (PyTorch's default init for that layer; a BatchNorm's running
statistics reset too), else a normal(0, 0.02) draw, under a fixed seed per step, so results are
reproducible. A data-randomisation variant (retrain on shuffled labels) is not here: it costs a training run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from vislab._modes import inference
from vislab.figures import sanity as figure
from vislab.models.stages import HEAD, Stage, stages
from vislab.views import cam

THRESHOLD = 0.5  # rank correlation below which a map counts as unrelated to the original
INIT_STD = 0.02  # the normal init of parameters whose module has no reset_parameters (timm's convention)

# a map method: (model, x (B, 3, H, W), target classes) -> maps (B, H, W) in [0, 1]
MapFn = Callable[[nn.Module, torch.Tensor, list], np.ndarray]


@dataclass
class Step:
    """One image's map after one step of the cascade (step 0: the untouched copy)."""

    image: int  # index of the image in the batch
    step: int  # 0 = original, k = k stages randomised
    name: str  # "original", "head", "head + layer4", "head + last 3 stages (to layer2)", "every layer (...)"
    stage: str  # the stage randomised at this step ("" at step 0)
    layers_randomised: int  # stages randomised so far (the head counts as one)
    modules_randomised: int  # parameterised modules re-initialised so far
    spearman: float  # rank correlation with the step-0 map (nan when exactly one of the two maps is flat)
    ssim: float  # structural similarity with the step-0 map
    map: np.ndarray  # (H, W) in [0, 1]


def plan(model: nn.Module) -> list[Stage]:
    """The stages in the order the cascade randomises them: the head first, the stem last."""
    return list(reversed(stages(model)))


def _device_indices(model: nn.Module) -> list[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})


@torch.no_grad()
def randomise(model: nn.Module, stage: Stage, seed: int = 0) -> int:
    """Re-initialise every parameter of `stage` in `model` (in place: give it a copy) with `seed`; the global
    random state is put back afterwards. Returns how many modules were re-initialised."""
    count = 0
    with torch.random.fork_rng(devices=_device_indices(model)):
        torch.manual_seed(seed)
        for root in stage.modules:
            for module in model.get_submodule(root).modules():
                own = list(module.parameters(recurse=False))
                if not own:
                    continue
                if callable(getattr(module, "reset_parameters", None)):
                    module.reset_parameters()
                else:
                    for p in own:
                        nn.init.normal_(p, 0.0, INIT_STD)
                count += 1
        for name in stage.params:  # root-level tensors (a ViT's cls_token, pos_embed)
            nn.init.normal_(model.get_parameter(name), 0.0, INIT_STD)
            count += 1
    return count


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps' pixel values (ties share their mean rank); 1 for identical
    maps, nan when exactly one of them is flat (no ranking to compare)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if np.array_equal(a, b):
        return 1.0
    if a.min() == a.max() or b.min() == b.max():
        return float("nan")
    return float(spearmanr(a, b).statistic)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """scikit-image's structural similarity of two maps in [0, 1] (7 x 7 windows, data range 1)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(np.asarray(a, np.float64), np.asarray(b, np.float64), data_range=1.0))


def cam_maps(method: str, layer: str | None = None) -> MapFn:
    """The CAM page's map for `method` (a name in cam.METHODS, or cam.CLASSIC) at `layer` (default: the
    model's last spatial layer; classic CAM always uses the maps before pooling, `layer` if given)."""
    if method != cam.CLASSIC and method not in cam.METHODS:
        raise ValueError(f"unknown CAM method '{method}': choose from {cam.CLASSIC}, {', '.join(cam.METHODS)}")

    chosen: list[str] = [layer] if layer else []  # found once, on the first (untouched) model it sees

    def maps(model: nn.Module, x: torch.Tensor, classes: list) -> np.ndarray:
        if method == cam.CLASSIC:
            return cam.classic(model, x, list(classes), layer=layer).maps
        if not chosen:
            chosen.append(cam.default_layer(model))
        return cam.run(model, x, [method], chosen[0], list(classes))[0].maps
    return maps


def step_name(done: list[str]) -> str:
    """How a step reads: the stages randomised so far, `done` top first (the head first)."""
    if not done:
        return "original"
    if len(done) == 1:
        return done[0]
    if len(done) == 2:
        return f"{done[0]} + {done[1]}"
    return f"{done[0]} + last {len(done) - 1} stages (to {done[-1]})"


def cascade(model: nn.Module, x: torch.Tensor, maps: MapFn, classes: list | None = None, seed: int = 0,
            on_progress: Callable[[int, int], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> list[list[Step]]:
    """The check for a batch `x` (B, 3, H, W): per image, its Step 0 (the original map) and one Step per
    stage randomised, head first (`[image][step]`). `maps` computes the maps (`cam_maps(method, layer)`, or
    any MapFn); `classes` are the target classes (default: the model's own top class per image), kept the
    same at every step. Runs on a deep copy; `on_progress(step, steps)` before each step; `should_stop()`
    ends the cascade early (the steps done so far are returned)."""
    order = plan(model)  # from the caller's model: a deep copy may drop a head's mark
    work = copy.deepcopy(model)
    if classes is None:
        with inference(work):
            classes = work(x).argmax(1).tolist()
    total = len(order) + 1
    if on_progress:
        on_progress(0, total)
    first = maps(work, x, list(classes))  # (B, H, W)
    out = [[Step(b, 0, "original", "", 0, 0, 1.0, 1.0, first[b])] for b in range(len(x))]
    done: list[str] = []
    modules = 0
    for k, stage in enumerate(order, start=1):
        if should_stop and should_stop():
            break
        if on_progress:
            on_progress(k, total)
        modules += randomise(work, stage, seed + k)
        done.append(stage.name)
        now = maps(work, x, list(classes))
        name = step_name(done) if k < len(order) else f"every layer ({HEAD} + {k - 1} stages)"
        for b in range(len(x)):
            out[b].append(Step(b, k, name, stage.name, k, modules, spearman(first[b], now[b]),
                               ssim(first[b], now[b]), now[b]))
    del work
    return out


def check(model: nn.Module, x: torch.Tensor, method: str, layer: str | None = None, classes: list | None = None,
          seed: int = 0, on_progress=None, should_stop=None) -> list[list[Step]]:
    """`cascade` for one of the CAM page's methods (cam.METHODS or cam.CLASSIC)."""
    return cascade(model, x, cam_maps(method, layer), classes, seed, on_progress, should_stop)


def _randomised_words(k: int, total: int) -> str:
    if k >= total:
        return "every layer"
    if k == 1:
        return f"the {HEAD}"
    return f"the {HEAD} and the last {'stage' if k == 2 else f'{k - 1} stages'}"


def sentence(steps: list[list[Step]], method: str, threshold: float = THRESHOLD) -> str:
    """What the check says, in one plain sentence: from which step on the map (the mean rank correlation over the
    images) stays unrelated to the original, or a warning when it stays similar with every layer random."""
    if not steps or len(steps[0]) < 2:
        return f"{method}: no layer was randomised, so there is nothing to compare."
    n = min(len(s) for s in steps)
    complete = steps[0][n - 1].name.startswith("every layer")
    total = steps[0][n - 1].layers_randomised if complete else n  # n: more stages than were randomised
    mean = [float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan")
            for rho in (np.array([s[k].spearman for s in steps]) for k in range(n))]
    over = f", mean over {len(steps)} images" if len(steps) > 1 else ""
    for k in range(1, n):  # the first step from which on the map stays unrelated (a map may come back first)
        if not any(m >= threshold for m in mean[k:]):  # nan: the map went flat, nothing of its ranking is left
            rho = "the map is flat" if np.isnan(mean[k]) else f"rank correlation {mean[k]:.2f} < {threshold:g}"
            return (f"After randomising {_randomised_words(k, total)}, {method}'s map is unrelated to the original "
                    f"({rho}{over}): it depends on the learned weights.")
    if complete:
        return (f"Warning: with every layer randomised, {method}'s map still has a rank correlation of "
                f"{mean[-1]:.2f} with the original (>= {threshold:g}{over}): it shows the image more than what the "
                "model learned, so do not read it as the model's reasons.")
    return (f"After randomising {_randomised_words(n - 1, total)}, {method}'s map still has a rank correlation of "
            f"{mean[-1]:.2f} with the original (>= {threshold:g}{over}); the check stopped before the lower layers.")


def crops(x: torch.Tensor, mean, std) -> np.ndarray:
    """The images the model saw, (B, H, W, 3) in [0, 1]: `x` (B, 3, H, W) with the normalisation undone."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device)[None, :, None, None]
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x * s + m).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


def titles(steps: list[Step]) -> list[str]:
    """One panel title per step: the stage it randomised, its rank correlation (rho) and SSIM to the original."""
    out = []
    for s in steps:
        if s.step == 0:
            out.append("original")
            continue
        rho = "flat map" if np.isnan(s.spearman) else f"rho {s.spearman:.2f}"
        out.append(f"{s.step}: +{s.stage}\n{rho} · SSIM {s.ssim:.2f}")
    return out


def strip_png(steps: list[Step], image: np.ndarray, method: str, cols: int = figure.COLS) -> bytes:
    """One image's strip as PNG bytes: `image` (H, W, 3) in [0, 1] (`crops`) under the original map and each
    step's, titled with rho and SSIM, the check's `sentence` above."""
    return figure.strip(image, [s.map for s in steps], titles(steps), sentence([steps], method), cols)
