"""A transfer study's two pictures as PNG files (the CLI's; the page draws the same with plotly): validation
accuracy against thaw depth, one line per training fraction with its spread over seeds and the references
(scratch, lp-ft) as dashed lines; and a depth x fraction heatmap of the mean accuracy.

Matplotlib (grad-cam's own dependency) draws them off-screen; the inputs are plain numbers, so this module
knows nothing of training."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9"]  # Okabe-Ito: colour-blind safe


def accuracy_by_depth(lines: dict[str, list[tuple[int, float, float]]], references: dict[str, list[float]],
                      path: str | Path, title: str, depth_labels: dict[int, str] | None = None) -> Path:
    """`lines`: label -> [(depth, mean, spread)]; `references`: label -> [mean, spread, colour index]."""
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=120)
    for i, (label, points) in enumerate(lines.items()):
        xs, ys, es = zip(*sorted(points))
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=4, lw=2, color=COLOURS[i % len(COLOURS)], label=label,
                    ls=":" if label.startswith("surgical") else "-")
    for label, (mean, spread, colour) in references.items():
        ax.axhline(mean, ls="--", lw=1.5, color=COLOURS[int(colour) % len(COLOURS)], label=label)
        ax.axhspan(mean - spread, mean + spread, alpha=0.08, color=COLOURS[int(colour) % len(COLOURS)])
    depths = sorted({d for points in lines.values() for d, _, _ in points})
    ax.set_xticks(depths, [(depth_labels or {}).get(d, str(d)) for d in depths])
    ax.set_xlabel("stages thawed below the head (0 = head only)"
                  + ("; surgical: the one stage trained" if any(k.startswith("surgical") for k in lines) else ""))
    ax.set_ylabel("best validation accuracy")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    return _save(fig, path)


def depth_fraction_heatmap(depths: list[int], fractions: list[float], means: list[list[float | None]],
                           path: str | Path, title: str) -> Path:
    """`means[i][j]`: mean accuracy at fractions[i], depths[j] (None: not measured)."""
    fig, ax = plt.subplots(figsize=(1.2 * len(depths) + 3, 0.7 * len(fractions) + 2.2), dpi=120)
    grid = [[float("nan") if v is None else v for v in row] for row in means]
    im = ax.imshow(grid, cmap="cividis", aspect="auto", vmin=0, vmax=1)
    for i, row in enumerate(means):
        for j, v in enumerate(row):
            if v is not None:
                ax.text(j, i, f"{v:.0%}", ha="center", va="center", color="white" if v < 0.6 else "black")
    ax.set_xticks(range(len(depths)), [str(d) for d in depths])
    ax.set_yticks(range(len(fractions)), [f"{f:.0%}" for f in fractions])
    ax.set_xlabel("stages thawed below the head")
    ax.set_ylabel("training images used")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, format=matplotlib.ticker.PercentFormatter(1.0))
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
