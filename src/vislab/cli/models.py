"""`vislab models`: the model catalog and which weights are available offline."""

from __future__ import annotations


def add_parser(sub) -> None:
    sub.add_parser("models", help="the model catalog and which weights are available offline")


def run(args) -> int:
    from vislab.models import catalog, weights  # torch: loaded when the command runs, not for its --help

    print(f"{'model':<24}{'source':<13}{'family':<14}{'params':>8}  SE  attn  {'CAM layer':<16}weights")
    for e in catalog.CATALOG:
        status = weights.status(e.name, e.source)
        avail = (f"{status.source} ({status.note})" if status.available and status.note
                 else (status.source or "none: random init only"))
        print(f"{e.name:<24}{e.source:<13}{e.family:<14}{e.params / 1e6:>7.1f}M  "
              f"{'yes' if e.has_se else ' - ':<4}{'yes' if e.has_attention else ' - ':<6}{e.cam_layer:<16}{avail}")
    print("Any other torchvision or timm model name works too (weights: vislab weights import / pull).")
    return 0
