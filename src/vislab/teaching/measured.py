"""The course's advice held against a measurement on the person's own data.

The advisor (teaching.advisor) places a dataset in the size x similarity matrix from two answers. Here both
come from the data: its size is counted, and its similarity to ImageNet is *measured* by a proxy: how
confident the pretrained model's own ImageNet head is on these images (the mean top-1 probability over up to
`n` of them). Photos of everyday objects get confident guesses; textures, micrographs or scans get a spread
of low ones. The proxy has limits, said on the page: it depends on the model (a stronger model is more
confident everywhere), on how many classes of ImageNet happen to resemble the images (fabric *is* in
ImageNet: 'velvet', 'wool'), and a confident wrong label still counts as "similar"; the threshold is a rule
of thumb set on this lab's bundled sets, not a law. A study (training.study) then shows what the matrix
could not: which thaw depth is best here, and by how much.
"""

from __future__ import annotations

from dataclasses import dataclass

from vislab.data import folders as data
from vislab.models import factory, heads
from vislab.models.weights import WeightsError
from vislab.teaching import advisor
from vislab.training import evaluation, study

LIMITS = ("How far the proxy goes: it is one model's confidence (a stronger model is more confident on "
          "everything), it counts a confident wrong label as similar, and ImageNet's 1,000 classes include fabrics, "
          "textures and scenes, so 'different' means the model finds no class of its own that fits well, not that "
          "the images are unlike photos. The threshold is a rule of thumb set on this lab's bundled sets. The "
          "study's own numbers are the answer for this dataset; the matrix is the prior.")
IMAGENET_CLASSES = 1000
SIMILAR_CONFIDENCE = 0.35  # mean top-1 probability of the ImageNet head at or above which images count as similar


@dataclass
class Similarity:
    confidence: float | None  # mean top-1 probability of the pretrained ImageNet head; None: not measurable
    images: int
    guesses: list[tuple[str, int]]  # the ImageNet classes it guessed most often, with how often
    note: str = ""

    @property
    def verdict(self) -> str | None:
        if self.confidence is None:
            return None
        return "similar" if self.confidence >= SIMILAR_CONFIDENCE else "different"

    def describe(self) -> str:
        if self.confidence is None:
            return self.note
        top = ", ".join(f"'{name}' ({count})" for name, count in self.guesses[:3])
        return (f"the pretrained ImageNet head is {self.confidence:.0%} confident on average over {self.images} "
                f"of these images (at least {SIMILAR_CONFIDENCE:.0%} counts as similar to ImageNet): "
                f"**{self.verdict}**; its most frequent guesses: {top}")


def similarity(model_name: str, report: data.DataReport, n: int = 64, seed: int = 0,
               img_size: int | None = None) -> Similarity:
    """Measure how ImageNet-like `report`'s images look to `model_name`'s pretrained ImageNet head (up to
    `n` images, an equal share of each class)."""
    try:
        model, info = factory.create_model(model_name, None, weights_choice="pretrained", img_size=img_size)
    except WeightsError as exc:
        return Similarity(None, 0, [], f"not measured: {exc}")
    outputs = heads.num_outputs(model)
    if outputs != IMAGENET_CLASSES:  # a seeded file's own head (e.g. 3 classes): its confidence says nothing
        return Similarity(None, 0, [], f"not measured: {model_name}'s weights here come with a {outputs}-class "
                                       "head, not ImageNet's 1,000 classes")
    per_class = max(1, n // max(1, len(report.classes)))
    items = data.subset(report, per_class, seed).items[:n]
    preds = evaluation.predict(model, items, info.data_config, engine="torch", name=model_name)
    names = evaluation.class_names(model_name, preds.probs.shape[1])
    counts: dict[str, int] = {}
    for k in preds.probs.argmax(1):
        counts[names[int(k)]] = counts.get(names[int(k)], 0) + 1
    guesses = sorted(counts.items(), key=lambda kv: -kv[1])
    return Similarity(float(preds.probs.max(1).mean()), len(items), guesses)


def matrix_against_study(images: int, sim: Similarity, rows: list[study.Row]) -> list[str]:
    """What the course's matrix says for this dataset, beside what the study measured, in sentences."""
    size = advisor.size_bucket(images)
    lines = []
    if sim.verdict is None:
        lines.append(f"The matrix needs a similarity to ImageNet, and it could not be measured ({sim.note}).")
    else:
        advice = advisor.advise(size, sim.verdict)
        lines.append(f"The matrix puts {images} images ({advisor.SIZE_LABELS[size]}) that look "
                     f"{sim.verdict} to ImageNet in the cell “{advice.title}” (strategy {advice.strategy}).")
    lines += [f"Measured: {line}" for line in study.verdicts(rows)]
    return lines
