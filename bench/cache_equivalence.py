"""Cached vs uncached training on many architectures: the feature cache must not change what is learned.

    .venv/bin/python bench/cache_equivalence.py                  # 22 models, head and partial (~10 min, 2 cores)
    .venv/bin/python bench/cache_equivalence.py resnet18 swin_t  # just these
    .venv/bin/python bench/cache_equivalence.py --engines torch  # the prefix in PyTorch only

Random weights, a small synthetic dataset, 2 epochs, the same seed. For each model, strategy and prefix
engine (engines.py: PyTorch, ONNX Runtime) it prints the largest relative difference of the per-epoch
train/val losses against the full loop, the largest weight difference, and the cache line (how much of the
network was cached and by which engine, or why not). Exit status 1 if any pair differs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from vislab.data import folders as data, synthetic
from vislab.training import experiment
from vislab.training.loop import TrainConfig

MODELS = ["resnet18", "mobilenet_v2", "efficientnet_b0", "convnext_atto", "regnet_y_400mf", "densenet121",
          "googlenet", "efficientnet_v2_s", "swin_t", "seresnext26d_32x4d", "ghostnet_100", "repvgg_a0",
          "mobilevit_xxs", "edgenext_xx_small", "rexnet_100", "nf_regnet_b0", "hrnet_w18_small",
          "shufflenet_v2_x0_5", "deit_tiny_patch16_224", "levit_128s", "fastvit_t8", "cspresnet50"]
FIXED_224 = {"deit_tiny_patch16_224", "levit_128s"}


ENGINES = ("torch", "onnxruntime")


def _run(name: str, strategy: str, report: data.DataReport, cache: bool, engine: str = "torch"):
    spec = experiment.Spec(model=name, strategy=strategy, weights="random", img_size=224 if name in FIXED_224 else 96,
                           engine=engine,
                           train=TrainConfig(epochs=2, batch_size=8, device="cpu", seed=1, cache=cache))
    return experiment.train(spec, report, None)


def compare(name: str, strategy: str, report: data.DataReport, engine: str = "torch", full=None
            ) -> tuple[float, float, str]:
    """Cached training with the prefix in `engine` against the full loop (`full`, trained here if None)."""
    a, b = _run(name, strategy, report, True, engine), full or _run(name, strategy, report, False)
    losses = [(x[k], y[k]) for x, y in zip(a.history.epochs, b.history.epochs) for k in ("train_loss", "val_loss")]
    rel = max(abs(x - y) / max(abs(y), 1e-6) for x, y in losses)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    weights = max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)
    return rel, weights, a.history.cache[0]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", metavar="MODEL", help=f"models to check (default: {len(MODELS)} of them)")
    p.add_argument("--engines", default=",".join(ENGINES), help="prefix engines, comma-separated")
    args = p.parse_args(argv)
    chosen = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not chosen or any(e not in ENGINES for e in chosen):
        p.error(f"--engines takes {', '.join(ENGINES)}")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    folder = synthetic.make_synthetic(Path(tempfile.mkdtemp()) / "syn", classes=3, per_class=8, size=64)
    report = data.scan_folder(folder)
    bad = 0
    for name in args.models or MODELS:
        for strategy in ("head", "partial"):
            full = None
            for engine in chosen:
                try:
                    full = full or _run(name, strategy, report, False)
                    rel, diff, cache = compare(name, strategy, report, engine, full)
                except Exception as exc:  # noqa: BLE001  report and go on
                    print(f"{name:24s} {strategy:8s} {engine:12s} ERROR {type(exc).__name__}: {str(exc)[:120]}",
                          flush=True)
                    bad += 1
                    continue
                ok = rel < 1e-3 and diff < 1e-3
                bad += not ok
                print(f"{name:24s} {strategy:8s} {engine:12s} {'same' if ok else 'DIFFERENT'}  losses {rel:.1e}  "
                      f"weights {diff:.1e}  | {cache[:150]}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
