"""The sanity check's strip as a PNG (the CLI's; `views.sanity` computes it): the image with its original map,
then the map after each randomisation step, each over the image with its rank correlation and SSIM to the
original in its title, rows of at most `cols` panels, and the check's sentence above them.

Matplotlib (grad-cam's own dependency) draws off-screen; the inputs are plain arrays and strings, so this
module knows nothing of models or views."""

from __future__ import annotations

import io
import textwrap

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLS = 8  # panels per row
OPACITY = 0.5  # the CAM page's overlay: Jet at 0.5


def strip(image: np.ndarray, maps: list[np.ndarray], titles: list[str], title: str, cols: int = COLS) -> bytes:
    """PNG bytes: `image` (H, W, 3) in [0, 1] under each of `maps` (H, W) in [0, 1], titled `titles`."""
    if len(maps) != len(titles):
        raise ValueError(f"{len(maps)} maps but {len(titles)} titles")
    cols = max(1, min(cols, len(maps)))
    rows = -(-len(maps) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.1 * rows + 0.6), squeeze=False, dpi=100)
    for ax in axes.flat:
        ax.axis("off")
    for ax, m, t in zip(axes.flat, maps, titles):
        ax.imshow(np.clip(image, 0, 1))
        ax.imshow(m, cmap="jet", alpha=OPACITY, vmin=0, vmax=1, interpolation="bilinear")
        ax.set_title(t, fontsize=7)
    fig.suptitle("\n".join(textwrap.wrap(title, 30 * cols)), fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
