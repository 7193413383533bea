"""The course's strategy matrix: dataset size x similarity to ImageNet -> what to try first.

The course draws a 2x2 matrix (small / large x similar / different) and calls a dataset of about 1k-10k images
small and one of 100k or more large. The lab's own datasets are often smaller than that (the textile sample
is a few hundred images), and many sit between the two, so the advisor has four sizes:

    tiny    (< 1k)      below the course's small: only the head, and more data if that is not enough
    small   (1k-10k)    the course's small row
    medium  (10k-100k)  the course's in-between case: the head and the last stages
    large   (100k+)     the course's large row

`MATRIX` is the course's 2x2 chart as it is drawn (plots.strategy_matrix); `chart_row` says which of its rows
a size is shown on (tiny on the small row, medium on none: it lies between them).
"""

from __future__ import annotations

from dataclasses import dataclass

SIZES = ("tiny", "small", "medium", "large")
SIMILARITIES = ("similar", "different")
SIZE_LABELS = {"tiny": "tiny (< 1k)", "small": "small (1k-10k)", "medium": "medium (10k-100k)",
               "large": "large (100k+)"}
# the smallest image count of each size after the first: tiny below 1,000, small from 1,000 to 9,999, …
_FLOORS = (("large", 100_000), ("medium", 10_000), ("small", 1_000))


@dataclass(frozen=True)
class Advice:
    title: str  # short, for the matrix cell
    strategy: str  # the preset that applies it (freezing.STRATEGIES)
    why: str  # one or two sentences


ADVICE: dict[tuple[str, str], Advice] = {
    ("tiny", "similar"): Advice(
        "Train only the new head", "head",
        "Fewer images than even the course's small case: keep the whole backbone frozen, its BatchNorm "
        "statistics too, and train the head alone, with augmentation and few epochs; a thawed backbone would "
        "learn these few hundred images by heart."),
    ("tiny", "different"): Advice(
        "Hardest case: get more data", "head",
        "Too few images to retrain any features, and borrowed ones that fit poorly: train the head alone to "
        "see how far the frozen features go; if that falls short, the fix is more images (or semi-supervised "
        "learning), since thawing more layers on this little data overfits."),
    ("small", "similar"): Advice(
        "Train only the new head", "head",
        "The pretrained features already describe images like yours; with little data, training more than the "
        "head mostly overfits."),
    ("small", "different"): Advice(
        "Hardest case: get more data", "partial",
        "Too little data to learn from scratch and features that fit poorly: collect more data; meanwhile "
        "train the head plus the last stages, which hold the most task-specific features."),
    ("medium", "similar"): Advice(
        "Head plus the last stages", "partial",
        "Between small and large: the early layers' edges and colours fit images like yours as they are, so "
        "keep them frozen and fine-tune the last stages, which hold the task-specific shapes and textures, "
        "together with the head."),
    ("medium", "different"): Advice(
        "Head first, then everything", "two-phase",
        "Enough images, and unlike ImageNet, so more than the last stages needs to change, but too few to "
        "drop the pretrained weights: train the head, then thaw all at a 2-10x smaller learning rate."),
    ("large", "similar"): Advice(
        "Head first, then everything", "two-phase",
        "Enough data to adapt every layer: train the head, then thaw all at a 2-10x smaller learning rate so "
        "the pretrained features are nudged, not destroyed."),
    ("large", "different"): Advice(
        "Train from scratch", "scratch",
        "With many images unlike ImageNet, features learned on your own data beat borrowed ones; keep the "
        "proven architecture, drop its weights."),
}

# the course's 2x2 chart, as plots.strategy_matrix draws it
MATRIX: dict[tuple[str, str], Advice] = {key: ADVICE[key] for key in ADVICE if key[0] in ("small", "large")}
_CHART_ROWS = {"tiny": "small", "small": "small", "medium": None, "large": "large"}
_CHART_NOTES = {
    "tiny": "The course's chart starts its small row at about 1k images: a tiny dataset is shown on that row, "
            "where the first step is the same, only with even less room to thaw anything.",
    "medium": "The course's chart has no row for it: a medium dataset lies between its small and large rows "
              "(the course's in-between case), so no cell is highlighted.",
}


def size_bucket(images: int) -> str:
    """The size (one of SIZES) of a dataset of `images` labelled images."""
    if isinstance(images, bool) or not isinstance(images, int) or images < 0:
        raise ValueError(f"an image count must be a whole number >= 0, not {images!r}")
    return next((size for size, floor in _FLOORS if images >= floor), "tiny")


def chart_row(size: str) -> str | None:
    """The row of the course's 2x2 chart (MATRIX) that `size` is shown on: tiny on "small" (it is below the
    course's small, and gets the same first step), medium on none (it lies between the rows)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    return _CHART_ROWS[size]


def chart_note(size: str) -> str | None:
    """How a size that is not one of the chart's rows is shown on it (None for the chart's own rows)."""
    chart_row(size)  # refuses an unknown size
    return _CHART_NOTES.get(size)


def advise(size: str, similarity: str) -> Advice:
    if size not in SIZES or similarity not in SIMILARITIES:
        raise ValueError(f"size must be one of {SIZES} and similarity one of {SIMILARITIES}")
    return ADVICE[(size, similarity)]
