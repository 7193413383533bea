"""The class seen from the front of the room: every lab of the lab home (all servers sharing VISLAB_HOME),
each with its name, dataset, model, strategy, latest job and best accuracy, and a leaderboard per dataset.

The Class page polls this every few seconds while a class of 8 to 30 trains, so it must cost nearly nothing:
every file is read through a cache keyed by (path, mtime_ns, size), so a poll stats the labs' files and reads
only those that changed (a running job's progress.json, a new epoch's events.jsonl); a finished lab costs a
handful of stats. No torch is imported (the server's page threads must not wait on it).

Same dataset, same digest: two people who upload the same images get the same `digest`, whatever their
upload folders are called. A dataset report (dataset.json, a job's job.json) keeps each image's path but no
file digest, and hashing every image of 30 labs on a poll is not cheap, so the digest is the SHA-256 of the
sorted class names with, per class, the sorted sizes of its image files (one stat per image, done once per
version of the file that holds the report). Byte-for-byte different images of identical sizes in identical classes would share a
digest; for photos that is practically never.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from vislab.serving import labs
from vislab.serving.claims import running_alive
from vislab.serving.events import Progress

FAILED = ("error",)  # job states shown as failed, with their message


# ---- the file cache ----------------------------------------------------------------------------------------
_cache: dict[tuple[str, str], tuple[tuple, object]] = {}  # (what, path) -> ((mtime_ns, size), parsed)
_guard = threading.Lock()
READS = {"count": 0}  # files actually read (not served from the cache): what a test or a benchmark checks


def _cached(path: Path, what: str, parse, default=None):
    """`parse(path)` once per version of the file (mtime_ns, size); `default` when it is missing or damaged."""
    try:
        st = path.stat()
    except OSError:
        return default
    version = (st.st_mtime_ns, st.st_size)
    key = (what, str(path))
    with _guard:
        hit = _cache.get(key)
    if hit is not None and hit[0] == version:
        return hit[1]
    try:
        value = parse(path)
    except (OSError, ValueError, UnicodeDecodeError, TypeError, KeyError):
        value = default
    with _guard:
        READS["count"] += 1
        _cache[key] = (version, value)
        if len(_cache) > 20_000:  # labs come and go: forget the oldest entries rather than grow without end
            for old in list(_cache)[:5_000]:
                _cache.pop(old, None)
    return value


def _json(path: Path):
    return json.loads(path.read_text())


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# ---- datasets ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetInfo:
    """A dataset report as the class overview shows it: its classes, image count and content digest."""

    classes: tuple[str, ...]
    images: int
    digest: str  # see the module docstring: class names and each class's file sizes

    @property
    def short(self) -> str:
        return self.digest[:8]


def dataset_info(report: dict | None) -> DatasetInfo | None:
    """The DatasetInfo of a report dict (`data.report_to_dict`), None for no report. One stat per image: the
    overview calls it once per version of a dataset.json or job.json (see `_cached`)."""
    if not isinstance(report, dict) or not report.get("classes"):
        return None
    classes = [str(c) for c in report["classes"]]
    items = report.get("items") or []
    sizes: dict[str, list[int]] = {c: [] for c in classes}
    for path, label in items:
        try:
            size = os.stat(path).st_size
        except OSError:
            size = -1  # gone since: still part of what was used
        if 0 <= int(label) < len(classes):
            sizes[classes[int(label)]].append(size)
    content = sorted((c, sorted(s)) for c, s in sizes.items())
    return DatasetInfo(tuple(classes), len(items), hashlib.sha256(json.dumps(content).encode()).hexdigest())


# ---- runs and jobs -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunRow:
    """One training run of a lab: what the leaderboards rank."""

    lab: str  # the lab's id: for the page to open the run, never shown
    run: str  # its folder name under the lab's runs/
    kind: str
    state: str
    model: str
    strategy: str
    head: str
    best: float | None  # best validation accuracy so far (0..1)
    dataset: DatasetInfo | None  # what it trained on (its job.json's report)
    dataset_label: str
    message: str = ""
    progress: float | None = None  # running: the share done (0..1)
    progress_text: str = ""
    activity: float = 0.0  # last change to its files (seconds since the epoch)

    @property
    def folder(self) -> Path:
        return labs.Lab(self.lab).runs_dir / self.run

    @property
    def openable(self) -> bool:
        """Has weights to show read-only (finished, stopped or interrupted after an epoch)."""
        return self.kind == "train" and self.state in ("done", "stopped", "interrupted") and self.best is not None


def _payload_summary(path: Path) -> dict:
    """What the overview needs of a job.json (it holds the whole dataset report: read once per version)."""
    d = _json(path)
    spec = d.get("spec") or {}
    return {"kind": d.get("kind", "train"), "model": spec.get("model") or d.get("model") or "",
            "strategy": spec.get("strategy") or "", "head": spec.get("head") or "",
            "dataset": dataset_info(d.get("report"))}


def _best_of_events(path: Path) -> float | None:
    best = None
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            acc = (rec.get("metrics") or {}).get("val_acc") if rec.get("kind") == "epoch" else None
            if isinstance(acc, (int, float)):
                best = acc if best is None else max(best, acc)
    return best


def _best_of_metrics(path: Path) -> float | None:
    accs = [m["val_acc"] for m in _json(path) if isinstance(m.get("val_acc"), (int, float))]
    return max(accs) if accs else None


def _progress(rec: dict) -> tuple[float | None, str]:
    """(share done, words) of a running job's progress record."""
    p = Progress.of(rec)
    if p.stage == "training" and p.epochs:
        done = ((p.epoch_now - 1) + (p.batch / p.batches if p.batches else 0)) / p.epochs
        return min(max(done, 0.0), 1.0), f"epoch {p.epoch_now}/{p.epochs}"
    if p.stage == "caching" and p.to_cache:
        return 0.0, f"caching features {p.cached}/{p.to_cache}"
    return 0.0, p.stage or "starting"


def run_row(lab_id: str, folder: Path) -> RunRow | None:
    """One job folder of a lab as a RunRow; None when it is not a job (no status.json and no job.json)."""
    status = _cached(folder / "status.json", "json", _json, {}) or {}
    payload = _cached(folder / "job.json", "payload", _payload_summary, None)
    if not status and payload is None and not (folder / "config.json").is_file():
        return None
    state = status.get("state", "done" if (folder / "model.safetensors").is_file() else "queued")
    message = status.get("message") or ""
    if state == "running" and not running_alive(status):
        state, message = "interrupted", message or "the worker ended before the run finished"
    config = _cached(folder / "config.json", "json", _json, None) or \
        _cached(folder / "checkpoint" / "config.json", "json", _json, None) or {}
    payload = payload or {"kind": "train", "model": "", "strategy": "", "head": "", "dataset": None}
    bests = [_cached(folder / "events.jsonl", "best", _best_of_events, None),
             _cached(folder / "metrics.json", "best", _best_of_metrics, None),
             _cached(folder / "checkpoint" / "metrics.json", "best", _best_of_metrics, None)]
    bests = [b for b in bests if b is not None]
    share, words = None, ""
    if state == "running":
        share, words = _progress(_cached(folder / "progress.json", "json", _json, {}) or {})
    activity = max(_mtime(folder / name) for name in ("status.json", "progress.json", "events.jsonl"))
    return RunRow(lab_id, folder.name, payload["kind"], state, config.get("model") or payload["model"],
                  config.get("strategy") or payload["strategy"], config.get("head_kind") or payload["head"] or "linear",
                  max(bests) if bests else None, payload["dataset"], "", message, share, words, activity)


# ---- labs --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabRow:
    """One lab as the Class page lists it."""

    id: str  # never shown (it is the participant's private link): the page keys its choices on it
    name: str  # its display name (labs.clean_name), "" when none was given
    dataset_label: str
    dataset: DatasetInfo | None  # the lab's current dataset (dataset.json)
    model: str
    strategy: str
    runs: tuple[RunRow, ...] = field(default_factory=tuple)  # newest first
    activity: float = 0.0

    @property
    def latest(self) -> RunRow | None:
        return self.runs[0] if self.runs else None

    @property
    def best(self) -> RunRow | None:
        scored = [r for r in self.runs if r.kind == "train" and r.best is not None]
        return max(scored, key=lambda r: r.best) if scored else None

    @property
    def status(self) -> str:
        """The latest job in words: queued / running (epoch k/N, NN %) / done / failed: its message / ..."""
        job = self.latest
        if job is None:
            return "no runs yet"
        if job.state == "running":
            return f"running · {job.progress_text} · {job.progress:.0%}" if job.progress is not None else "running"
        if job.state in FAILED:
            return f"failed: {job.message or 'no message'}"
        if job.state in ("stopped", "interrupted", "cancelled") and job.message:
            return f"{job.state}: {job.message}"
        return job.state


def lab_row(folder: Path) -> LabRow | None:
    """The overview of one lab folder; None for what is not a lab (a stray file, a damaged state)."""
    if not labs.valid_id(folder.name) or folder.is_symlink():
        return None
    state = _cached(folder / "state.json", "json", _json, None)
    if not isinstance(state, dict):
        return None
    ds_state = state.get("dataset") if isinstance(state.get("dataset"), dict) else {}
    label = str(ds_state.get("label") or "")
    dataset = _cached(folder / "dataset.json", "dataset", lambda p: dataset_info(_json(p)), None) if ds_state else None
    rows = []
    runs_dir = folder / "runs"
    try:
        names = sorted((p.name for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                       reverse=True)
    except OSError:
        names = []
    for name in names:
        row = run_row(folder.name, runs_dir / name)
        if row is not None:  # the lab's name for its dataset, on the runs that used it (or a subset of it)
            same = dataset is not None and row.dataset is not None and row.dataset.classes == dataset.classes
            rows.append(replace(row, dataset_label=label) if same else row)
    activity = max([_mtime(folder / "state.json")] + [r.activity for r in rows])
    return LabRow(folder.name, labs.clean_name(state.get("lab_name")), label, dataset,
                  str(state.get("model_name") or ""), str(state.get("strategy") or ""), tuple(rows), activity)


def overview(root: Path | None = None) -> list[LabRow]:
    """Every lab of the lab home, the most recently active first."""
    root = labs.labs_dir() if root is None else Path(root)
    try:
        folders = list(root.iterdir())
    except OSError:
        return []
    rows = [r for r in (lab_row(f) for f in folders) if r is not None]
    return sorted(rows, key=lambda r: -r.activity)


# ---- leaderboards ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Board:
    """The best run of each lab that trained on one dataset (one content digest), best first."""

    dataset: DatasetInfo
    label: str  # the name most of its labs gave it
    entries: tuple[tuple[LabRow, RunRow], ...]


def leaderboards(rows: list[LabRow]) -> list[Board]:
    """One Board per dataset digest that has a scored training run: each lab's best run on it, best first;
    the boards with the most labs first."""
    best: dict[str, dict[str, tuple[LabRow, RunRow]]] = {}
    datasets: dict[str, DatasetInfo] = {}
    labels: dict[str, dict[str, int]] = {}
    for lab in rows:
        for run in lab.runs:
            if run.kind != "train" or run.best is None or run.dataset is None:
                continue
            d = run.dataset.digest
            datasets[d] = run.dataset
            mine = best.setdefault(d, {})
            if lab.id not in mine or run.best > mine[lab.id][1].best:
                mine[lab.id] = (lab, run)
            if run.dataset_label:
                labels.setdefault(d, {}).setdefault(run.dataset_label, 0)
                labels[d][run.dataset_label] += 1
    boards = []
    for d, mine in best.items():
        entries = tuple(sorted(mine.values(), key=lambda e: (-e[1].best, e[0].name)))
        names = labels.get(d) or {}
        label = max(names, key=lambda n: (names[n], n)) if names else f"dataset {d[:8]}"
        boards.append(Board(datasets[d], label, entries))
    return sorted(boards, key=lambda b: (-len(b.entries), b.label))


def ago(when: float, now: float | None = None) -> str:
    """'12 s ago', '4 min ago', '3 h ago', '2 days ago': last activity as the table says it."""
    if not when:
        return "—"
    s = max(0.0, (time.time() if now is None else now) - when)
    if s < 60:
        return f"{s:.0f} s ago"
    if s < 3600:
        return f"{s / 60:.0f} min ago"
    if s < 86400:
        return f"{s / 3600:.0f} h ago"
    return f"{s / 86400:.0f} days ago"
