"""Freeze strategies side by side: several configurations on the same split and seed, one table.

Runs share the cached features of a frozen prefix they have in common (feature_cache.build's pool), so a
comparison of head-only and partial runs runs the backbone about once. That shared caching pass is timed
apart (`caching_passes`): a configuration's "train seconds" are its own, not the pass that the first of
its group happened to pay for.

Accuracies on a small validation set differ by chance: `noise` compares every configuration with the best
on the same validation images (McNemar's exact test on the saved predictions; a two-proportion test from
the confusion matrices of a comparison saved without them) and says which are within noise of the best.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from vislab.data import folders as data
from vislab.training import evaluation, experiment, runs
from vislab.models import freezing
from vislab.training.loop import Event, TrainConfig

COLUMNS = ("run", "strategy", "head", "bn", "lr", "final val acc", "best val acc", "final val loss",
           "kept val acc", "± SE", "vs the best", "train seconds", "caching pass", "trainable params",
           "BN layers moved")
ALPHA = 0.05  # a difference with p >= ALPHA is within noise


@dataclass
class Config:
    """One configuration to compare (a row of the table)."""

    name: str
    strategy: str = "head"
    thaw_last: int = 1
    bn: str | None = None  # BN mode of thawed pretrained stages (None: the preset's default)
    head: str = "linear"
    lr: float = 1e-3
    layer_decay: float | None = None
    plan: dict | None = None  # a custom FreezePlan (as a dict) instead of the strategy's preset

    @classmethod
    def preset(cls, strategy: str) -> Config:
        return cls(name=strategy, strategy=strategy, thaw_last=2 if strategy == "partial" else 1)


@dataclass
class Row:
    config: Config
    metrics: list[dict]
    seconds: float
    trainable: int
    bn_moved: int  # BatchNorm layers whose running stats changed during training
    confusion: list[list[int]]
    run_dir: str | None
    cache: list[str]
    # the caching passes this run used, one per phase that cached: {"id": n, "built": bool, "seconds": s}
    # (seconds of the pass when this run built it; `seconds` above includes them, `own_seconds` does not)
    passes: list[dict] = field(default_factory=list)
    predicted: list[int] | None = None  # class predicted for each validation image (kept weights), in order
    labels: list[int] | None = None  # true class of each validation image, same order
    model: object = field(default=None, repr=False)  # kept in memory for CAM / feature-map views

    @property
    def own_seconds(self) -> float:
        """Training time without the caching passes this run built (those are shown apart)."""
        return max(self.seconds - sum(p["seconds"] for p in self.passes if p["built"]), 0.0)

    def summary(self) -> dict:
        last = self.metrics[-1] if self.metrics else {}
        return {"run": self.config.name, "strategy": self.config.strategy, "head": self.config.head,
                "bn": self.config.bn or "default", "lr": self.config.lr,
                "final val acc": last.get("val_acc"), "best val acc": max((m["val_acc"] for m in self.metrics),
                                                                         default=None),
                "final val loss": last.get("val_loss"), "train seconds": round(self.own_seconds, 2),
                "caching pass": ", ".join(f"#{p['id']}" for p in self.passes) or "none",
                "trainable params": self.trainable, "BN layers moved": self.bn_moved}


@dataclass
class CachingPass:
    """One run of a frozen prefix over every image, whose features one or more configurations trained on."""

    id: int
    seconds: float
    built_by: str
    used_by: list[str]

    def describe(self) -> str:
        if len(self.used_by) == 1:
            return (f"caching pass #{self.id}: {self.seconds:.1f} s, used by {self.used_by[0]} only "
                    "(not in its train seconds)")
        return (f"shared caching pass #{self.id}: {self.seconds:.1f} s, used by {', '.join(self.used_by)} "
                f"(run once, during {self.built_by}; not in anyone's train seconds)")


def caching_passes(rows: list[Row]) -> list[CachingPass]:
    """The comparison's caching passes, each with its time and the configurations that trained on it."""
    found: dict[int, CachingPass] = {}
    for r in rows:
        for p in r.passes:
            cp = found.setdefault(p["id"], CachingPass(p["id"], 0.0, "", []))
            if p["built"]:
                cp.seconds, cp.built_by = p["seconds"], r.config.name
            if r.config.name not in cp.used_by:
                cp.used_by.append(r.config.name)
    return [found[k] for k in sorted(found)]


@dataclass
class Verdict:
    """A configuration's accuracy on the validation images against the best one's."""

    run: str
    correct: int
    n: int
    status: str  # "best", "within noise" (of the best) or "behind"
    diff: int = 0  # images the best got right beyond this one's count (0 for the best)
    p: float = 1.0  # two-sided p-value of the difference (1.0 for the best)
    test: str = "McNemar"  # "McNemar" (paired, same images) or "two-proportion" (counts only)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def se(self) -> float:
        """Binomial standard error of the accuracy."""
        return math.sqrt(self.accuracy * (1 - self.accuracy) / self.n) if self.n else 0.0

    def describe(self) -> str:
        if self.status == "best":
            return "best (or tied)"
        images = f"{self.diff} image{'s' if self.diff != 1 else ''} fewer"
        return f"{images}, {self.status} ({self.test} p = {self.p:.2g})"


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b, c are the images only the first / only the second got right."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def two_proportion_p(x1: int, n1: int, x2: int, n2: int) -> float:
    """Two-sided p-value of two accuracies on separate counts (pooled z-test): when predictions are missing."""
    if not n1 or not n2:
        return 1.0
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    return math.erfc(abs(x1 / n1 - x2 / n2) / se / math.sqrt(2))


def _correct(r: Row) -> list[bool] | None:
    if r.predicted is None or r.labels is None or len(r.predicted) != len(r.labels):
        return None
    return [p == y for p, y in zip(r.predicted, r.labels)]


def noise(rows: list[Row], alpha: float = ALPHA) -> list[Verdict]:
    """Each configuration against the best on the validation images (of the kept weights): McNemar's exact
    test when every run saved its predictions on the same images, else a two-proportion test on the
    confusion matrices. A difference with p >= alpha is within noise: no winner is crowned over it. Runs
    tied at the top accuracy are all "best"; the others are tested against the first of them."""
    if not rows:
        return []
    hits = [_correct(r) for r in rows]
    paired = all(h is not None for h in hits) and len({tuple(r.labels) for r in rows}) == 1
    if paired:
        counts = [(sum(h), len(h)) for h in hits]
    else:
        counts = [(int(sum(r.confusion[i][i] for i in range(len(r.confusion)))),
                   int(sum(map(sum, r.confusion)))) for r in rows]
    acc = [x / n if n else 0.0 for x, n in counts]
    best = max(range(len(rows)), key=lambda i: acc[i])
    test = "McNemar" if paired else "two-proportion"
    out = []
    for i, r in enumerate(rows):
        x, n = counts[i]
        if acc[i] == acc[best]:
            out.append(Verdict(r.config.name, x, n, "best", test=test))
            continue
        if paired:
            b = sum(1 for hb, hi in zip(hits[best], hits[i]) if hb and not hi)
            c = sum(1 for hb, hi in zip(hits[best], hits[i]) if hi and not hb)
            p = mcnemar_p(b, c)
        else:
            p = two_proportion_p(counts[best][0], counts[best][1], x, n)
        out.append(Verdict(r.config.name, x, n, "within noise" if p >= alpha else "behind",
                           counts[best][0] - x, p, test))
    return out


def noise_text(verdicts: list[Verdict], alpha: float = ALPHA) -> str:
    """One plain paragraph: the best, which configurations are within noise of it, and which are behind."""
    if not verdicts:
        return ""
    top = [v for v in verdicts if v.status == "best"]
    close = [v for v in verdicts if v.status == "within noise"]
    behind = [v for v in verdicts if v.status == "behind"]
    how = ("McNemar's exact test on the same validation images" if top[0].test == "McNemar" else
           "a two-proportion test on the confusion matrices (this comparison saved no per-image predictions)")
    n = top[0].n
    text = f"On {n} validation images ({f'one image is {100 / n:.1f} points' if n else 'none'}; kept weights), "
    best = (f"{top[0].run} ({top[0].accuracy:.3f})" if len(top) == 1 else
            f"{', '.join(v.run for v in top)} (tied at {top[0].accuracy:.3f})")
    if close:
        names = ", ".join(f"{v.run} ({v.accuracy:.3f}, {v.diff} image{'s' if v.diff != 1 else ''} fewer, "
                          f"p = {v.p:.2g})" for v in close)
        text += (f"{names} {'is' if len(close) == 1 else 'are'} within noise of the best, {best}: no winner "
                 f"among them (p >= {alpha:g}, {how}).")
    elif len(top) > 1:
        text += f"{best} tie for the best: no winner among them."
    elif len(verdicts) > 1:
        text += (f"{best} is ahead of every other configuration beyond noise (p < {alpha:g} against each, "
                 f"{how}).")
    else:
        text += f"{best} is the only configuration."
    if behind and (close or len(top) > 1):
        text += " Behind the best beyond noise: " + ", ".join(f"{v.run} ({v.accuracy:.3f}, p = {v.p:.2g})"
                                                              for v in behind) + "."
    return text


def table(rows: list[Row]) -> list[dict]:
    """The comparison table (COLUMNS): each row's summary with its accuracy against the best's."""
    verdicts = noise(rows)
    out = []
    for r, v in zip(rows, verdicts):
        row = r.summary()
        row.update({"kept val acc": round(v.accuracy, 4), "± SE": round(v.se, 4), "vs the best": v.describe()})
        out.append({c: row.get(c) for c in COLUMNS})
    return out


class _Pool(dict):
    """feature_cache.build's feature pool that notes which entry was built or reused (the caching passes)."""

    def __init__(self):
        super().__init__()
        self.ids: dict = {}
        self.log: list[tuple[str, object]] = []

    def __getitem__(self, key):
        self.log.append(("used", key))
        return super().__getitem__(key)

    def __setitem__(self, key, value):
        self.ids.setdefault(key, len(self.ids) + 1)
        self.log.append(("built", key))
        super().__setitem__(key, value)


class _PassClock:
    """Times each phase's caching step (from its 'phase' event to its 'cache' event) and records which pool
    entry it built or reused; forwards every event."""

    def __init__(self, pool: _Pool, forward: Callable[[Event], None] | None):
        self.pool, self.forward = pool, forward
        self.passes: list[dict] = []
        self.t = time.perf_counter()
        self.mark = len(pool.log)

    def __call__(self, e: Event) -> None:
        now = time.perf_counter()
        if e.kind == "phase":
            self.t, self.mark = now, len(self.pool.log)
        elif e.kind == "cache":
            for op, key in self.pool.log[self.mark:]:
                built = op == "built"
                self.passes.append({"id": self.pool.ids[key], "built": built,
                                    "seconds": round(now - self.t, 3) if built else 0.0})
            self.mark = len(self.pool.log)
        if self.forward is not None:
            self.forward(e)


def _bn_stats(model) -> dict[str, torch.Tensor]:
    return {n: m.running_mean.detach().clone() for n, m in model.named_modules()
            if freezing.is_batchnorm(m) and m.running_mean is not None}


def run(model_name: str, report: data.DataReport, configs: list[Config], epochs: int, out: str | Path | None,
        img_size: int | None = None, batch_size: int = 32, seed: int = 0, per_class: int | None = None,
        on_event: Callable[[str, Event], None] | None = None, stop: threading.Event | None = None,
        engine: str = "auto") -> list[Row]:
    """Train each configuration in turn on the same split and seed; write `comparison.csv/json` to `out`.
    `engine` runs the cached frozen prefixes (vislab.training.engines: auto, torch or onnxruntime)."""
    names = [data.safe_name(c.name).casefold() for c in configs]
    if len(set(names)) != len(names) or not all(names):
        raise ValueError("each configuration needs its own name (letters or digits; names that differ only "
                         "in case or punctuation count as one)")
    report = data.subset(report, per_class, seed)
    pool = _Pool()
    rows: list[Row] = []
    for config in configs:
        if stop is not None and stop.is_set():
            break
        spec = experiment.Spec(model=model_name, strategy=config.strategy, thaw_last=config.thaw_last, bn=config.bn,
                               head=config.head, weights="random" if config.strategy == "scratch" else "auto",
                               img_size=img_size, per_class=None,
                               train=TrainConfig(epochs=epochs, lr=config.lr, batch_size=batch_size, seed=seed,
                                                 layer_decay=config.layer_decay),
                               engine=engine)
        if config.plan is not None:  # a hand-made plan (the Freeze page's) replaces the preset's phases
            spec.strategy = "custom"
        prepared = experiment.prepare(spec, len(report.classes), plan=config.plan)
        trainable = freezing.report(prepared[0]).trainable_params
        before = _bn_stats(prepared[0])
        clock = _PassClock(pool, (lambda e, n=config.name: on_event(n, e)) if on_event else None)
        start = time.perf_counter()
        result = experiment.train(spec, report, Path(out) / (data.safe_name(config.name) or "run") if out else None,
                                  clock, stop, prepared=prepared, cache_pool=pool)
        seconds = time.perf_counter() - start
        after = _bn_stats(result.model)
        moved = sum(1 for n, v in before.items() if not torch.equal(v, after[n].to(v.device)))
        preds = evaluation.predict(result.model.cpu(), result.val_items, result.info.data_config, batch_size)
        cm = evaluation.confusion(preds, len(report.classes)).tolist()
        rows.append(Row(config, result.history.epochs, seconds, trainable, moved, cm,
                        str(result.run_dir) if result.run_dir else None, result.history.cache, clock.passes,
                        [int(p) for p in preds.predicted], [int(y) for y in preds.labels], result.model))
    if out is not None:
        save(Path(out), model_name, report.classes, rows)
    return rows


def csv_text(rows: list[Row]) -> str:
    """The table (COLUMNS) as CSV text."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table(rows))
    return buf.getvalue()


def save(folder: Path, model_name: str, classes: list[str], rows: list[Row]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "comparison.csv").write_text(csv_text(rows))
    (folder / "comparison.json").write_text(json.dumps({
        "model": model_name, "classes": classes,
        "rows": [{"config": asdict(r.config), "metrics": r.metrics, "seconds": r.seconds,
                  "trainable": r.trainable, "bn_moved": r.bn_moved, "confusion": r.confusion,
                  "run_dir": r.run_dir, "cache": r.cache, "passes": r.passes, "predicted": r.predicted,
                  "labels": r.labels} for r in rows]}, indent=2))


_BUILT = re.compile(r"prefix \((\d+) modules up to '(.*?)'\) run once by .*?, (\d+(?:\.\d+)?) s \(")
_SHARED = re.compile(r"prefix \((\d+) modules up to '(.*?)'\) shared with an earlier run")


def passes_from_cache_lines(rows: list[Row]) -> None:
    """The caching passes of a comparison saved before they were recorded, read back from each run's cache
    lines (feature_cache.Cache.describe): a shared prefix is matched to the latest earlier pass over the same one."""
    latest: dict[tuple, int] = {}  # (modules, last module) of a prefix -> id of its latest pass
    built = 0
    for r in rows:
        r.passes = []
        for line in r.cache:
            if m := _BUILT.search(line):
                built += 1
                latest[m.group(1, 2)] = built
                r.passes.append({"id": built, "built": True, "seconds": float(m.group(3))})
            elif (m := _SHARED.search(line)) and m.group(1, 2) in latest:
                r.passes.append({"id": latest[m.group(1, 2)], "built": False, "seconds": 0.0})


def load(folder: str | Path, models: bool = True) -> tuple[str, list[str], list[Row]]:
    """A saved comparison: (model name, classes, rows), with their models reloaded from the run folders
    unless `models` is False."""
    saved = json.loads((Path(folder) / "comparison.json").read_text())
    rows = []
    for r in saved["rows"]:
        model = (runs.load(r["run_dir"])[0] if models and r.get("run_dir") and Path(r["run_dir"]).is_dir()
                 else None)
        rows.append(Row(Config(**r["config"]), r["metrics"], r["seconds"], r["trainable"], r["bn_moved"],
                        r["confusion"], r.get("run_dir"), r.get("cache", []), r.get("passes") or [],
                        r.get("predicted"), r.get("labels"), model))
    if not any("passes" in r for r in saved["rows"]):  # saved before passes were timed apart
        passes_from_cache_lines(rows)
    return saved["model"], saved["classes"], rows


def markdown(rows: list[Row]) -> str:
    """The table, its caching passes and which configurations are within noise of the best."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in table(rows):
        cells = [f"{v:.3f}" if isinstance(v, float) and not isinstance(v, bool) else str(v)
                 for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [p.describe() for p in caching_passes(rows)]
    lines.append(noise_text(noise(rows)))
    return "\n".join(lines) + "\n"
