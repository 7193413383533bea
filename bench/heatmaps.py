"""Can the heatmaps be trusted on images the lab has never seen? Issue 26's measurement: images whose class
is decided by one small object at a known place (`data.synthetic.make_objects`: a red disc, a blue square or
a green triangle on a cluttered background), a pretrained model trained head only (`training.experiment`,
what `vislab train --strategy head` runs), then on held-out images of the same generator:

- Grad-CAM's deletion and insertion AUC (`views.faithfulness`: blurred fill, 20 steps) for the object's
  class beside the random map's, the centred blob's and a backwards map's (1 - Grad-CAM), mean ± sd;
- where the map points: the share of its mass inside the object's box (beside the box's share of the
  image, what a flat map would get), and the pointing game (the map's peak inside the box);
- the sanity check (`views.sanity`, cascading randomisation head first down to the stem): Grad-CAM's rank
  correlation with the original map once every layer is random;
- seconds per image for the scores (map + its three scorings) and for the sanity check.

    .venv/bin/python bench/heatmaps.py [--model mobilenet_v3_small] [--size 128] [--per-class 30]
                                       [--test-per-class 10] [--epochs 4]

Writes bench/heatmaps.json and bench/heatmaps.md. `measure` is what tests/test_heatmap_truth.py runs small.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

from vislab.data import folders as data, synthetic  # noqa: E402
from vislab.data.config import resize_for  # noqa: E402
from vislab.training import experiment  # noqa: E402
from vislab.training.loop import TrainConfig  # noqa: E402
from vislab.views import base as views, faithfulness, sanity  # noqa: E402

METHOD = "GradCAM"
MAPS = ("gradcam", "random", "centre", "backwards")


def held_out(root: Path, classes: list[str], cfg) -> tuple[torch.Tensor, list[int], list[tuple[int, ...]]]:
    """The generator's images as the model sees them (its eval transform: resize, center crop), their
    classes and each object's box in the crop's pixels (the box mapped through the same resize and crop)."""
    meta = json.loads((root / synthetic.BOXES).read_text())
    names = sorted(meta["boxes"])
    pics = [Image.open(root / n).convert("RGB") for n in names]
    x = views.batch(pics, cfg)  # (B, 3, S, S)
    s, r, side = cfg.size, resize_for(cfg), meta["size"]
    shift = int(round((r - s) / 2.0))  # timm's center crop of the short-side resize
    boxes = []
    for n in names:
        x0, y0, x1, y1 = meta["boxes"][n]
        lo = [int(np.floor(v * r / side)) - shift for v in (x0, y0)]
        hi = [int(np.ceil((v + 1) * r / side)) - 1 - shift for v in (x1, y1)]
        boxes.append((max(lo[0], 0), max(lo[1], 0), min(hi[0], s - 1), min(hi[1], s - 1)))
    return x, [classes.index(n.split("/")[0]) for n in names], boxes


TOLERANCE = 15  # px: the pointing game's tolerance (Zhang et al. 2016, "Top-down neural attention")


def where(m: np.ndarray, box: tuple[int, ...]) -> tuple[float, bool, bool]:
    """The share of the map's mass inside the box, and whether its peak is inside (the pointing game),
    strictly and within TOLERANCE pixels of the box."""
    x0, y0, x1, y1 = box
    inside = float(m[y0:y1 + 1, x0:x1 + 1].sum() / max(m.sum(), 1e-12))
    py, px = np.unravel_index(int(np.argmax(m)), m.shape)
    gap = max(x0 - px, px - x1, 0) ** 2 + max(y0 - py, py - y1, 0) ** 2
    return inside, bool(gap == 0), bool(gap <= TOLERANCE ** 2)


def train(work: Path, model: str, size: int, per_class: int, epochs: int, seed: int, lr: float):
    root = synthetic.make_objects(work / "train", per_class=per_class, size=size, seed=seed)
    report = data.load_dataset(root)
    spec = experiment.Spec(model=model, strategy="head", img_size=size,
                           train=TrainConfig(epochs=epochs, lr=lr, batch_size=16, seed=seed, device="cpu"),
                           engine="torch")  # no prefix export written into the lab home
    return experiment.train(spec, report, None)


def measure(work: Path, model: str = "mobilenet_v3_small", size: int = 128, per_class: int = 30,
            test_per_class: int = 10, epochs: int = 4, seed: int = 0, lr: float = 1e-2,
            trained=None) -> dict:
    """Train head only (unless `trained`, an experiment.Result, is given) and score Grad-CAM on held-out
    images; per-image lists under "per_image", summaries at the top level."""
    result = trained or train(Path(work), model, size, per_class, epochs, seed, lr)
    net, cfg = result.model.cpu().eval(), result.info.data_config
    test_root = synthetic.make_objects(Path(work) / "test", per_class=test_per_class, size=size, seed=seed + 1000)
    x, targets, boxes = held_out(test_root, result.classes, cfg)
    with torch.no_grad():
        accuracy = float((net(x).argmax(1) == torch.tensor(targets)).float().mean())
    per: dict[str, list] = {f"{m}_{k}": [] for m in MAPS for k in ("deletion", "insertion")}
    per.update(mass_in_box=[], pointing_hit=[], pointing_hit_tolerant=[], box_share=[])
    start = time.perf_counter()
    gradcam = sanity.cam_maps(METHOD)(net, x, targets)  # (B, S, S) in [0, 1], the object's class
    for b in range(len(x)):
        found = faithfulness.with_baselines(net, x[b:b + 1], gradcam[b], targets[b], seed=seed + b)
        for name, key in (("map", "gradcam"), ("random", "random"), ("centre", "centre")):
            per[f"{key}_deletion"].append(found[name].deletion_auc)
            per[f"{key}_insertion"].append(found[name].insertion_auc)
    scores_s = (time.perf_counter() - start) / len(x)
    for b in range(len(x)):
        back = faithfulness.score(net, x[b:b + 1], 1 - gradcam[b], targets[b])
        per["backwards_deletion"].append(back.deletion_auc)
        per["backwards_insertion"].append(back.insertion_auc)
        inside, hit, near = where(gradcam[b], boxes[b])
        x0, y0, x1, y1 = boxes[b]
        per["mass_in_box"].append(inside)
        per["pointing_hit"].append(hit)
        per["pointing_hit_tolerant"].append(near)
        per["box_share"].append((x1 - x0 + 1) * (y1 - y0 + 1) / cfg.size ** 2)
    start = time.perf_counter()
    steps = sanity.check(net, x, METHOD, classes=targets, seed=seed)
    sanity_s = (time.perf_counter() - start) / len(x)
    per["spearman_all_random"] = [s[-1].spearman for s in steps]
    per["ssim_all_random"] = [s[-1].ssim for s in steps]
    summary = {k: {"mean": float(np.nanmean(v)), "sd": float(np.nanstd(v))} for k, v in per.items()}
    return {"model": model, "size": cfg.size, "classes": result.classes, "train_images": per_class * len(result.classes),
            "test_images": len(x), "epochs": epochs, "lr": lr, "seed": seed,
            "best_val_acc": result.history.best_val_acc, "test_acc": accuracy, "steps_randomised": len(steps[0]) - 1,
            "seconds_per_image": {"scores": round(scores_s, 3), "sanity": round(sanity_s, 3)},
            "summary": summary, "per_image": per}


def _row(label: str, s: dict, key: str, digits: int = 3) -> str:
    return f"| {label} | {s[key]['mean']:.{digits}f} ± {s[key]['sd']:.{digits}f} |"


def markdown(r: dict, command: str, when: str, machine: str) -> str:
    s = r["summary"]
    lines = [f"Run {when} on {machine}.", "", f"Command: `{command}`", "",
             f"{r['model']} (seeded pretrained weights), head only, {r['epochs']} epochs at lr {r['lr']} on "
             f"{r['train_images']} generated images ({', '.join(r['classes'])}; {r['size']} px); best validation "
             f"accuracy {r['best_val_acc']:.3f}, accuracy on the {r['test_images']} held-out images "
             f"{r['test_acc']:.3f}. Maps for the object's class; deletion / insertion with a blurred fill in "
             f"{faithfulness.STEPS} steps; mean ± sd over the held-out images.", "",
             "| map | deletion AUC (lower is better) | insertion AUC (higher is better) |", "|---|---:|---:|"]
    for name, label in (("gradcam", "Grad-CAM"), ("random", "random map"), ("centre", "centred blob"),
                        ("backwards", "backwards (1 - Grad-CAM)")):
        lines.append(f"| {label} | {s[name + '_deletion']['mean']:.3f} ± {s[name + '_deletion']['sd']:.3f} | "
                     f"{s[name + '_insertion']['mean']:.3f} ± {s[name + '_insertion']['sd']:.3f} |")
    lines += ["", "| where Grad-CAM points | mean ± sd |", "|---|---:|",
              _row("share of the map's mass inside the object's box", s, "mass_in_box"),
              _row("the box's share of the image (a flat map's mass inside)", s, "box_share"),
              _row("pointing game: the map's peak inside the box", s, "pointing_hit", 2),
              _row(f"pointing game, within {TOLERANCE} px of the box", s, "pointing_hit_tolerant", 2),
              _row(f"Spearman with the original, every layer random ({r['steps_randomised']} steps)", s,
                   "spearman_all_random"),
              _row("SSIM with the original, every layer random", s, "ssim_all_random"), "",
              f"Seconds per image: scores (Grad-CAM map + its deletion, insertion and the two baselines') "
              f"**{r['seconds_per_image']['scores']}**, sanity check (all {r['steps_randomised']} steps) "
              f"**{r['seconds_per_image']['sanity']}**."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mobilenet_v3_small")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--test-per-class", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="vislab-bench-heatmaps-") as work:
        r = measure(Path(work), args.model, args.size, args.per_class, args.test_per_class, args.epochs, args.seed,
                    args.lr)
    when, machine = time.strftime("%Y-%m-%d %H:%M"), f"{platform.machine()}, {os.cpu_count()} cores"
    r.update(when=when, machine=machine, load_before=load_before, args=vars(args))
    (ROOT / "bench" / "heatmaps.json").write_text(json.dumps(r, indent=2))
    command = f".venv/bin/python bench/heatmaps.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip()
    (ROOT / "bench" / "heatmaps.md").write_text(markdown(r, command, when, machine))
    print((ROOT / "bench" / "heatmaps.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
