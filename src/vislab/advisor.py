"""The course's strategy matrix: dataset size x similarity to ImageNet -> what to try first."""

from __future__ import annotations

from dataclasses import dataclass

SIZES = ("small", "large")
SIMILARITIES = ("similar", "different")


@dataclass(frozen=True)
class Advice:
    title: str  # short, for the matrix cell
    strategy: str  # the preset that applies it (freezing.STRATEGIES)
    why: str  # one sentence


MATRIX: dict[tuple[str, str], Advice] = {
    ("small", "similar"): Advice(
        "Train only the new head", "head",
        "The pretrained features already describe images like yours; with little data, training more than the "
        "head mostly overfits."),
    ("large", "similar"): Advice(
        "Head first, then everything", "two-phase",
        "Enough data to adapt every layer: train the head, then thaw all at a 2-10x smaller learning rate so "
        "the pretrained features are nudged, not destroyed."),
    ("large", "different"): Advice(
        "Train from scratch", "scratch",
        "With many images unlike ImageNet, features learned on your own data beat borrowed ones; keep the "
        "proven architecture, drop its weights."),
    ("small", "different"): Advice(
        "Hardest case: get more data", "partial",
        "Too little data to learn from scratch and features that fit poorly: collect more data; meanwhile "
        "train the head plus the last stages, which hold the most task-specific features."),
}


def advise(size: str, similarity: str) -> Advice:
    if size not in SIZES or similarity not in SIMILARITIES:
        raise ValueError(f"size must be one of {SIZES} and similarity one of {SIMILARITIES}")
    return MATRIX[(size, similarity)]
