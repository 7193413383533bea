"""A transfer study: how much of a pretrained network to thaw, for how much data, measured on one dataset.

A study trains a grid of configurations of one model on one dataset: thaw depth (stages counted from the head
exactly as `--thaw-last` counts them: 0 = the new head only, all = a full fine-tune) x training fraction
(nested and stratified: with one seed the 10 % set lies inside the 25 % set) x seed, with optional BatchNorm
modes of the thawed stages and reference strategies (scratch: random init, all stages; lp-ft: head first,
then everything at a lower rate; llrd: everything at once, each stage's rate lower the farther it is from
the head; surgical: the head and one stage only, the depth-th from the head, as Lee et al. 2023 tune one
block). Every configuration of one seed is validated on the same images, the split
that `vislab train --seed` makes, so rows of a seed differ only in what the study varies.

Each row is the run `vislab train` makes with the same arguments (its `command` column), trained in this one
process with one feature-cache pool: no process starts per configuration, a smaller fraction takes its
features as rows of the larger one's, and a shallower cut's longer frozen prefix continues from the deeper
cut's cached output, so the images are decoded and the shared part of the network run about once per seed. Rows are written to `study.json` / `study.csv` as they finish; a study
run again on the same folder keeps the finished rows and trains only the rest.
"""

from __future__ import annotations

import functools
import math
import os
import shlex
import socket
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from vislab import _fileio as fileio
from vislab.data import folders as data
from vislab.models import catalog, freezing
from vislab.models.build import build_architecture
from vislab.models.stages import HEAD, stages
from vislab.training import experiment, runs
from vislab.training.loop import Event, TrainConfig

STRATEGIES = ("finetune", "surgical", "lp-ft", "llrd", "scratch")
LINES = ("finetune", "surgical")  # strategies drawn as a line over depth (the others as one reference each)
LLRD_DECAY = 0.75  # llrd: every stage thawed, its learning rate lr x 0.75 per stage below the head
COLUMNS = ("name", "strategy", "depth", "fraction", "seed", "bn", "best_val_acc", "final_val_acc",
           "final_val_loss", "best_epoch", "train_s", "trainable_params", "train_images", "val_images", "command")


def body_stages(model_name: str) -> int:
    """How many stages the model has below its head (what `--thaw-last` counts), from its architecture."""
    return sum(1 for s in stages(build_architecture(model_name)) if s.name != HEAD)


def default_depths(n: int) -> list[int]:
    """A few depths spread over an `n`-stage network: head only, the last one and two stages, half, all."""
    return sorted({d for d in (0, 1, 2, n // 2, n) if 0 <= d <= n})


@dataclass(frozen=True)
class Point:
    """One configuration of the grid (one row of one seed)."""

    strategy: str  # finetune | surgical | lp-ft | llrd | scratch
    depth: int  # finetune: stages thawed below the head; surgical: the one stage thawed, counted from the head;
                # scratch, lp-ft and llrd train all of them
    fraction: float
    seed: int
    bn: str | None = None

    @property
    def name(self) -> str:
        bn = f"_bn-{self.bn}" if self.bn else ""
        return f"{self.strategy}_d{self.depth}_f{self.fraction * 100:g}_s{self.seed}{bn}"


@dataclass
class Plan:
    """What to measure. `depths` None: `default_depths` of the model."""

    model: str = catalog.DEFAULT_MODEL
    depths: list[int] | None = None
    fractions: list[float] = field(default_factory=lambda: [1.0])
    seeds: list[int] = field(default_factory=lambda: [0])
    bn: list[str | None] = field(default_factory=lambda: [None])
    strategies: list[str] = field(default_factory=lambda: ["finetune", "scratch"])
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 32
    img_size: int | None = None
    weights: str = "auto"
    engine: str = "auto"
    per_class: int | None = None
    val_frac: float = 0.2

    def check(self, n_stages: int) -> None:
        """A ValueError for a plan that cannot run on a model of `n_stages` stages."""
        if bad := [s for s in self.strategies if s not in STRATEGIES]:
            raise ValueError(f"unknown strategy {', '.join(bad)}: choose from {', '.join(STRATEGIES)}")
        if bad := [d for d in self.depths or () if not 0 <= d <= n_stages]:
            raise ValueError(f"depth {bad[0]} is outside 0-{n_stages}: {self.model} has {n_stages} stages below "
                             "its head")
        if bad := [f for f in self.fractions if not 0 < f <= 1]:
            raise ValueError(f"a training fraction lies in (0, 1], not {bad[0]}")
        if bad := [b for b in self.bn if b is not None and b not in freezing.BN_MODES]:
            raise ValueError(f"unknown BatchNorm mode {bad[0]}: choose from {', '.join(freezing.BN_MODES)}")
        if not self.seeds or not self.fractions or not self.strategies:
            raise ValueError("a study needs at least one seed, one fraction and one strategy")

    def points(self, n_stages: int) -> list[Point]:
        """Every configuration, seed by seed, largest fraction first (its cache serves the smaller ones), then
        the deepest thaw first: its frozen prefix is the shortest, and each shallower cut's longer prefix
        continues from that cached output instead of decoding and running the images again."""
        depths = self.depths if self.depths is not None else default_depths(n_stages)
        out = []
        for seed in self.seeds:
            for fraction in sorted(set(self.fractions), reverse=True):
                for bn in self.bn:
                    if "finetune" in self.strategies:
                        out += [Point("finetune", d, fraction, seed, bn) for d in sorted(set(depths), reverse=True)]
                    if "surgical" in self.strategies:  # depth 0 would be the head only: finetune's row
                        out += [Point("surgical", d, fraction, seed, bn) for d in sorted(set(depths), reverse=True)
                                if d > 0]
                    out += [Point(s, n_stages, fraction, seed, bn) for s in ("lp-ft", "llrd") if s in self.strategies]
                if "scratch" in self.strategies:  # random init trains its BatchNorm: one row, whatever `bn`
                    out.append(Point("scratch", n_stages, fraction, seed))
        return out

    def spec(self, point: Point, n_stages: int) -> experiment.Spec:
        """The experiment a point is: the same Spec `vislab train` builds from `command`'s arguments."""
        strategy, thaw = {"lp-ft": ("two-phase", 1), "llrd": ("full", 1),
                          "scratch": ("scratch", 1)}.get(point.strategy, (None, 1))
        if point.strategy == "surgical":
            strategy, thaw = "surgical", point.depth
        elif strategy is None:  # finetune: thaw the last `depth` stages
            strategy, thaw = (("head", 1) if point.depth == 0 else ("full", 1) if point.depth >= n_stages
                              else ("partial", point.depth))
        return experiment.Spec(
            model=self.model, strategy=strategy, thaw_last=thaw, bn=point.bn,
            weights="random" if strategy == "scratch" else self.weights, img_size=self.img_size,
            val_frac=self.val_frac, per_class=self.per_class, train_fraction=point.fraction, engine=self.engine,
            train=TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=point.seed,
                              layer_decay=LLRD_DECAY if point.strategy == "llrd" else None))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        return cls(**d)


def command(spec: experiment.Spec, data_arg: str, out: str | Path) -> str:
    """The `vislab train` command line that trains `spec` on its own (the study's row, reproduced)."""
    args = ["vislab", "train", "--data", data_arg, "--model", spec.model, "--strategy", spec.strategy]
    if spec.strategy in ("partial", "surgical"):
        args += ["--thaw-last", spec.thaw_last]
    if spec.bn:
        args += ["--bn", spec.bn]
    if spec.strategy != "scratch":
        args += ["--weights", spec.weights]
    args += ["--epochs", spec.train.epochs, "--lr", f"{spec.train.lr:g}", "--batch-size", spec.train.batch_size,
             "--seed", spec.train.seed]
    if spec.train.layer_decay:
        args += ["--layer-decay", f"{spec.train.layer_decay:g}"]
    for flag, value in (("--img-size", spec.img_size), ("--per-class", spec.per_class)):
        if value:
            args += [flag, value]
    if spec.val_frac != 0.2:
        args += ["--val-frac", f"{spec.val_frac:g}"]
    if spec.train_fraction != 1:
        args += ["--train-fraction", f"{spec.train_fraction:g}"]
    args += ["--engine", spec.engine, "--out", out]
    return " ".join(shlex.quote(str(a)) for a in args)


@dataclass
class Row:
    point: Point
    best_val_acc: float
    final_val_acc: float
    final_val_loss: float
    best_epoch: int
    train_s: float
    trainable_params: int
    train_images: int
    val_images: int
    run_dir: str | None
    command: str
    worker: str = ""  # host:pid of the process that trained it (on a cluster: which node and task)

    def flat(self) -> dict:
        """One line of study.csv (COLUMNS)."""
        return {"name": self.point.name, **asdict(self.point), "bn": self.point.bn or "",
                **{k: v for k, v in asdict(self).items() if k not in ("point", "run_dir", "worker")}}

    @classmethod
    def from_dict(cls, d: dict) -> Row:
        return cls(**{**d, "point": Point(**d["point"])})


@dataclass
class Study:
    """A study's plan, stage count and finished rows (what study.json holds)."""

    plan: Plan
    n_stages: int
    rows: list[Row] = field(default_factory=list)

    def missing(self) -> list[Point]:
        done = {r.point for r in self.rows}
        return [p for p in self.plan.points(self.n_stages) if p not in done]

    def save(self, folder: Path) -> None:
        fileio.write_json(folder / "study.json", {"plan": self.plan.to_dict(), "n_stages": self.n_stages,
                                                  "rows": [asdict(r) for r in self.rows]})
        fileio.write_bytes(folder / "study.csv", csv_text(self.rows).encode())


def load(folder: str | Path) -> Study | None:
    """The study saved in `folder`, or None when there is none."""
    saved = fileio.read_json(Path(folder) / "study.json", None)
    if not saved:
        return None
    return Study(Plan.from_dict(saved["plan"]), saved["n_stages"], [Row.from_dict(r) for r in saved["rows"]])


def csv_text(rows: list[Row]) -> str:
    return fileio.csv_text([r.flat() for r in rows], COLUMNS)


def groups(points: list[Point]) -> list[list[Point]]:
    """The points as groups that share no cached work with each other: one per seed (its own split and
    initialisation; inside it every depth and fraction shares one feature-cache pool). A cluster trains the
    groups side by side; in one process they run one after another, the same rows either way."""
    out: dict[int, list[Point]] = {}
    for p in points:
        out.setdefault(p.seed, []).append(p)
    return list(out.values())


Spread = Callable[[list[list[Point]], Callable, Callable, object], Iterator["Row"]]


def run(plan: Plan, report: data.DataReport, out: str | Path, data_arg: str | None = None,
        on_event: Callable[[str, Event], None] | None = None, stop: threading.Event | None = None,
        on_row: Callable[[Study], None] | None = None, spread: Spread | None = None) -> Study:
    """Train every configuration of `plan` not yet in `out`/study.json, each into `out`/runs/<name>, sharing one
    feature-cache pool per group (`groups`); study.json/csv are rewritten after each row (`on_row` sees the study
    then, the new row last) and at the end in the plan's order. A stopped configuration leaves no row (the next run trains it again).
    `data_arg` is the --data of the commands. `spread(groups, train, on_event, stop)`, when given, trains the
    groups elsewhere (serving.rayspread: one Ray task per group) and yields their rows as they finish;
    `train(points, on_event, stop)` is what each group runs there."""
    out = Path(out)
    n_stages = body_stages(plan.model)
    plan.check(n_stages)
    study = load(out)
    if study is None or study.plan != plan:
        if study is not None and study.rows:
            raise ValueError(f"{out} holds another study ({len(study.rows)} rows): use a new folder")
        study = Study(plan, n_stages)
    order = {p: i for i, p in enumerate(plan.points(n_stages))}
    train = functools.partial(_train_points, plan, n_stages, report, out, data_arg or report.root)
    todo = study.missing()
    rows = spread(groups(todo), train, on_event, stop) if spread and todo else train(todo, on_event, stop)
    for row in rows:  # in the order they finish (the last row is the new one), then in the plan's
        study.rows.append(row)
        study.save(out)
        if on_row is not None:
            on_row(study)
    study.rows.sort(key=lambda r: order.get(r.point, len(order)))
    study.save(out)
    return study


def _train_points(plan: Plan, n_stages: int, report: data.DataReport, out: Path, data_arg: str,
                  points: list[Point], on_event, stop) -> Iterator[Row]:
    """The rows of `points`, trained in this process with one feature-cache pool, until one is stopped."""
    pool: dict = {}
    for point in points:
        if stop is not None and stop.is_set():
            return
        row = _train_row(plan, point, n_stages, report, out, data_arg, pool, on_event, stop)
        if row is None:
            return
        yield row


def _train_row(plan: Plan, point: Point, n_stages: int, report: data.DataReport, out: Path, data_arg: str,
               pool: dict, on_event, stop) -> Row | None:
    spec = plan.spec(point, n_stages)
    run_dir = out / "runs" / point.name
    prepared = experiment.prepare(spec, len(report.classes))
    trainable = freezing.report(prepared[0]).trainable_params
    start = time.perf_counter()
    result = experiment.train(spec, report, run_dir, (lambda e: on_event(point.name, e)) if on_event else None,
                              stop, prepared=prepared, cache_pool=pool)
    seconds = time.perf_counter() - start
    epochs = result.history.epochs
    if not epochs or result.history.stopped or len(epochs) < spec.train.epochs:
        return None  # stopped part-way: not a row of this study
    best = max(epochs, key=lambda m: m["val_acc"])
    split = runs.read_config(run_dir)
    return Row(point, best["val_acc"], epochs[-1]["val_acc"], epochs[-1]["val_loss"], best["epoch"],
               round(seconds, 2), trainable, split["train_size"], split["val_size"], str(run_dir),
               command(spec, data_arg, run_dir), f"{socket.gethostname()}:{os.getpid()}")


# ---- reading the answer -----------------------------------------------------------------------------------

@dataclass
class Cell:
    """One (strategy, depth, fraction, bn) over its seeds."""

    strategy: str
    depth: int
    fraction: float
    bn: str | None
    accs: list[float]
    val_images: int

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accs)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.accs) if len(self.accs) > 1 else 0.0

    @property
    def se(self) -> float:
        """Standard error of the mean: the seeds' spread, and never less than one validation image's worth."""
        spread = self.sd / math.sqrt(len(self.accs)) if len(self.accs) > 1 else 0.0
        return max(spread, 1 / max(self.val_images, 1))


def cells(rows: list[Row]) -> list[Cell]:
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault((r.point.strategy, r.point.depth, r.point.fraction, r.point.bn), []).append(r)
    return [Cell(*key, [r.best_val_acc for r in rs], min(r.val_images for r in rs)) for key, rs in groups.items()]


def within_noise(a: Cell, b: Cell) -> bool:
    """Two settings are within noise when their means differ by less than twice their combined standard error
    (about a 95 % interval for the difference): the study does not crown one of them."""
    return abs(a.mean - b.mean) < 2 * math.hypot(a.se, b.se)


def verdicts(rows: list[Row]) -> list[str]:
    """Per fraction (and BatchNorm mode), the best thaw depth and which depths are within noise of it, in words;
    the same for surgical rows (which single stage to train), when the study has them."""
    lines = []
    found = cells(rows)
    heads = {(c.fraction, c.bn): c for c in found if c.strategy == "finetune" and c.depth == 0}
    for strategy in LINES:
        mine = [c for c in found if c.strategy == strategy]
        for fraction, bn in sorted({(c.fraction, c.bn) for c in mine}, key=lambda k: (-k[0], str(k[1]))):
            group = sorted((c for c in mine if (c.fraction, c.bn) == (fraction, bn)), key=lambda c: c.depth)
            lines.append(_verdict(strategy, group, heads.get((fraction, bn))))
    return lines


def _verdict(strategy: str, group: list[Cell], head: Cell | None) -> str:
    best = max(group, key=lambda c: c.mean)
    ties = [c.depth for c in group if c is not best and within_noise(c, best)]
    gain = (f"; {100 * (best.mean - head.mean):+.1f} ± {100 * math.hypot(best.se, head.se):.1f} points over "
            "the head only" if head is not None and best is not head else "")
    tie = f" (within noise: {'depth' if strategy == 'finetune' else 'stage'} {', '.join(map(str, ties))})" if ties else ""
    bn_text = f", BatchNorm {best.bn}" if best.bn else ""
    spread = (f"± {100 * best.se:.1f} points over {len(best.accs)} seeds" if len(best.accs) > 1 else
              f"one seed, so no spread measured (± {100 * best.se:.1f} points is one validation image)")
    what = (f"thawing {best.depth} stage(s) is best" if strategy == "finetune" else
            f"training only stage {best.depth} from the head (surgical) is the best single stage")
    return f"{best.fraction:.0%} of the training images{bn_text}: {what} at {best.mean:.1%} ({spread}){gain}{tie}."


def figure_data(rows: list[Row]) -> tuple[dict, dict]:
    """The accuracy-by-depth picture as numbers: {'50 % of the images[, BatchNorm eval]': [(depth, mean, sd)]}
    (surgical rows as their own lines, 'surgical, one stage: 50 %...', x = the stage trained) and the references
    {'scratch, 50 %': [mean, sd, colour index]} (a reference shares its fraction's colour)."""
    found = cells(rows)
    keys = sorted({(c.fraction, c.bn) for c in found if c.strategy == "finetune"}, key=lambda k: (-k[0], str(k[1])))
    colour = {k: i for i, k in enumerate(keys)}
    lines = {}
    for strategy in LINES:
        for fraction, bn in sorted({(c.fraction, c.bn) for c in found if c.strategy == strategy},
                                   key=lambda k: (-k[0], str(k[1]))):
            label = (("" if strategy == "finetune" else "surgical, one stage: ") + f"{fraction:.0%} of the images"
                     + (f", BatchNorm {bn}" if bn else ""))
            lines[label] = [(c.depth, c.mean, c.sd) for c in found
                            if c.strategy == strategy and (c.fraction, c.bn) == (fraction, bn)]
    refs = {f"{c.strategy}, {c.fraction:.0%}" + (f", BN {c.bn}" if c.bn else ""):
            [c.mean, c.sd, colour.get((c.fraction, c.bn), colour.get((c.fraction, None), 0))]
            for c in found if c.strategy not in LINES}
    return lines, refs


def heatmap_data(study: Study) -> tuple[list[int], list[float], list[list[float | None]]] | None:
    """The depth x fraction heatmap as numbers (the fine-tune rows of the first BatchNorm mode): depths,
    fractions (largest first), and the mean best accuracy of each (None: not measured); None without rows."""
    fine = [c for c in cells(study.rows) if c.strategy == "finetune" and c.bn == study.plan.bn[0]]
    if not fine:
        return None
    depths = sorted({c.depth for c in fine})
    fractions = sorted({c.fraction for c in fine}, reverse=True)
    mean = {(c.fraction, c.depth): c.mean for c in fine}
    return depths, fractions, [[mean.get((f, d)) for d in depths] for f in fractions]


def write_figures(study: Study, folder: str | Path) -> list[Path]:
    """study_depth.png (accuracy against thaw depth) and study_heatmap.png (depth x fraction) in `folder`."""
    from vislab.figures import study as pictures  # matplotlib: only a study that draws files needs it

    lines, refs = figure_data(study.rows)
    if not lines and not refs:
        return []
    title = f"{study.plan.model}: what to thaw, for how much data ({len(study.plan.seeds)} seed(s))"
    made = [pictures.accuracy_by_depth(lines, refs, Path(folder) / "study_depth.png", title,
                                       {0: "0\nhead only", study.n_stages: f"{study.n_stages}\nall"})]
    if (grid := heatmap_data(study)) is not None:
        made.append(pictures.depth_fraction_heatmap(*grid, Path(folder) / "study_heatmap.png",
                                                    f"{study.plan.model}: mean best validation accuracy"))
    return made
