"""Which map explains best on the images in view, and whether that is decided or noise.

Each method gets one number per image, its *gap*: insertion AUC minus deletion AUC (views.faithfulness),
which is high when putting the map's top pixels back restores the answer and taking them away loses it.
A ranking over a few images is easily noise: photos differ far more from each other than methods do on
one photo, so two methods are compared *paired*, image by image. The top method is **decided** over
another only when the mean of their per-image differences is larger than the spread (standard deviation
over images) of those differences; otherwise the page says plainly that they are within noise. One image
has no spread, and the sentence says so rather than crowning a winner.

The baselines (a random map, a centred blob) are ranked beside the methods, so a number means something:
a method that does not beat the random map is said not to, and a blob that does as well as the best
method means the maps say no more than "the object is in the middle".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RANDOM = "random map"
BLOB = "centred blob"


@dataclass
class Standing:
    name: str
    baseline: bool
    mean: float  # the gap (insertion - deletion) averaged over images
    std: float  # its standard deviation over images (ddof 1); NaN with one image
    low: float  # the smallest and largest gap over images
    high: float
    images: int


@dataclass
class Ranking:
    standings: list[Standing]  # best first, methods and baselines together
    sentences: list[str]  # plain verdicts: who ranks first (or that it is not decided), who fails a baseline


def gap(deletion_auc: float, insertion_auc: float) -> float:
    """Insertion minus deletion: one number per map and image, higher is more faithful (in [-1, 1])."""
    return insertion_auc - deletion_auc


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _paired(a: dict[str, float], b: dict[str, float]) -> tuple[float, float, int]:
    """(mean, spread, n) of a - b over the images both have; spread NaN below two images."""
    common = [k for k in a if k in b]
    d = np.array([a[k] - b[k] for k in common], dtype=np.float64)
    if not len(d):
        return float("nan"), float("nan"), 0
    return float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else float("nan"), len(d)


def _decided(a: dict[str, float], b: dict[str, float]) -> bool:
    """`a` is ahead of `b` by more than the spread of their per-image differences (never on one image)."""
    mean, spread, n = _paired(a, b)
    return n > 1 and mean > spread


def _standing(name: str, per_image: dict[str, float], baseline: bool) -> Standing:
    v = np.array(list(per_image.values()), dtype=np.float64)
    return Standing(name, baseline, float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
                    float(v.min()), float(v.max()), len(v))


def _images(n: int) -> str:
    return "this one image" if n == 1 else f"these {n} images"


def _first(methods: list[Standing], gaps: dict[str, dict[str, float]]) -> str:
    top = methods[0]
    n = top.images
    if len(methods) == 1:
        return f"{top.name} is the only method scored ({top.mean:.2f} insertion − deletion on {_images(n)})."
    if n == 1:
        return (f"{top.name} ranks first on this one image ({top.mean:.2f} insertion − deletion, "
                f"{methods[1].name} {methods[1].mean:.2f}); one image has no spread, so this ranking may be noise: "
                "score more images before calling a winner.")
    tied = [m.name for m in methods[1:] if not _decided(gaps[top.name], gaps[m.name])]
    if tied:
        return (f"{_names([top.name] + tied)} are within noise of each other on {_images(n)}: "
                "the ranking is not decided.")
    mean, spread, _ = _paired(gaps[top.name], gaps[methods[1].name])
    return (f"{top.name} ranks first on {_images(n)}: ahead of {methods[1].name} by {mean:.2f} on average, "
            f"more than the spread of that difference over the images ({spread:.2f}).")


def _against_baselines(methods: list[Standing], by_name: dict[str, Standing],
                       gaps: dict[str, dict[str, float]]) -> list[str]:
    out = []
    rnd = by_name.get(RANDOM)
    if rnd is not None:
        worse = [m.name for m in methods if m.mean <= rnd.mean]
        if worse:
            verb = "does" if len(worse) == 1 else "do"
            out.append(f"{_names(worse)} {verb} not beat the random map on {_images(rnd.images)} "
                       f"(the random map: {rnd.mean:.2f} insertion − deletion).")
        noisy = [m.name for m in methods if m.mean > rnd.mean and m.images > 1
                 and not _decided(gaps[m.name], gaps[RANDOM])]
        if noisy:
            out.append(f"{_names(noisy)} beat{'s' if len(noisy) == 1 else ''} the random map only within noise.")
    blob = by_name.get(BLOB)
    if blob is not None and methods and blob.mean >= methods[0].mean:
        out.append(f"The centred blob scores as well as the best method ({blob.mean:.2f} vs {methods[0].mean:.2f}): "
                   "on these images the maps say no more than \"the object is in the middle\".")
    return out


def rank(gaps: dict[str, dict[str, float]], baselines: tuple[str, ...] = (RANDOM, BLOB)) -> Ranking:
    """`gaps[name][image]`: each method's and baseline's gap per image. The standings, best mean first, and
    the sentences that say what they mean."""
    standings = sorted((_standing(name, per_image, name in baselines) for name, per_image in gaps.items()
                        if per_image), key=lambda s: -s.mean)
    by_name = {s.name: s for s in standings}
    methods = [s for s in standings if not s.baseline]
    sentences = ([_first(methods, gaps)] if methods else []) + _against_baselines(methods, by_name, gaps)
    return Ranking(standings, sentences)
