"""A job is a folder: the run folder it becomes. Everything about it is a file there, so a reloaded page, a
second tab or a restarted server reads the same state:

    job.json       the payload: what to run (kind, lab, device, and for training the experiment spec, freeze
                   plan and dataset report); written once, at submit
    status.json    state, pid, times, message; written by the queue (queued, cancelled) and the worker
    progress.json  the latest batch or caching step (epoch, batch, loss, phase, images cached, seconds)
    events.jsonl   one JSON line per phase, cache, epoch and end event (vislab.serving.events says what they hold)
    stop           present once Stop is pressed; the worker checks it between batches
    claim.json     which server started the job (taken atomically: of two servers sharing a lab home, one runs it)
    worker.log     the worker's own output (a crash's traceback lands here)
    checkpoint/    the best epoch so far (runs.save_checkpoint); config.json ... model.safetensors when done

States: queued -> running -> done | stopped | error, or queued -> cancelled. A job whose status says
running but whose process is gone (the server or the machine died) reads as *interrupted*; its checkpoint
loads and resumes.

The rest of the job system builds on this module: `claims` (which process holds a job), `events` (what a
running job tells), `worker` (the process that runs one), `jobqueue` (the queue interface and its shared
rules), `localqueue` and `rayqueue` (its two backends), `backends` (which one a server uses).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from vislab import _fileio as fileio
from vislab.serving import labs
from vislab.serving.claims import me, owner_alive, running_alive

ACTIVE = ("queued", "running")
FINAL = ("done", "stopped", "error", "cancelled", "interrupted")
KINDS = ("train", "compare", "study")


class JobError(ValueError):
    """A job that cannot be submitted or run (its lab already has one, bad settings): the message says why."""


@dataclass
class Job:
    folder: Path

    def __post_init__(self):
        self.folder = Path(self.folder)

    @property
    def id(self) -> str:
        return self.folder.name

    def payload(self) -> dict:
        """job.json: kind, lab, device and what the worker needs (see `worker.execute`)."""
        return fileio.read_json(self.folder / "job.json", {}) or {}

    def experiment_spec(self) -> dict:
        """The experiment spec of a training job (`experiment.Spec.to_dict()`), {} for a comparison."""
        return self.payload().get("spec") or {}

    def status(self) -> dict:
        """The status record; a running job whose worker is gone reads as interrupted."""
        try:
            rec = fileio.read_json(self.folder / "status.json", {}) or {}
        except ValueError:
            rec = {}
        if not rec:  # a run folder from before jobs existed, or one the CLI wrote
            # torch: runs imports it, and the pages list jobs without it (only an old run folder needs runs)
            from vislab.training import runs

            return {"state": "done" if runs.complete(self.folder) else "interrupted"}
        if rec.get("state") == "running" and not running_alive(rec):
            rec = {**rec, "state": "interrupted",
                   "message": rec.get("message") or "the worker process ended before the run finished "
                                                   "(the server stopped or the machine restarted)"}
        return rec

    @property
    def state(self) -> str:
        return self.status().get("state", "queued")

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def progress(self) -> dict:
        try:
            return fileio.read_json(self.folder / "progress.json", {}) or {}
        except ValueError:  # never half-written, but a damaged disk should not break the page
            return {}

    def events(self) -> list[dict]:
        """The records of events.jsonl (`events.decode` turns one back into a training Event)."""
        out = []
        try:
            with open(self.folder / "events.jsonl") as f:
                for line in f:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        continue  # a line cut by a kill
        except FileNotFoundError:
            pass
        return out

    def metrics(self) -> list[dict]:
        return [e["metrics"] for e in self.events() if e.get("kind") == "epoch" and e.get("metrics")]

    def cache_lines(self) -> list[str]:
        return [e["message"] for e in self.events() if e.get("kind") == "cache"]

    def request_stop(self) -> None:
        fileio.write_bytes(self.folder / "stop", b"stop\n")

    @property
    def stop_requested(self) -> bool:
        return (self.folder / "stop").exists()

    def write_status(self, **fields) -> dict:
        with fileio.lock(self.folder / "status.json"):  # worker, queue and other servers update it
            try:
                old = fileio.read_json(self.folder / "status.json", {}) or {}
            except ValueError:
                old = {}
            rec = {**old, **fields}
            fileio.write_json(self.folder / "status.json", rec)
        return rec

    def claim(self, owner: dict | None = None) -> bool:
        """Take this queued job for one server (`owner`, default this process) so no other server starts or
        cancels it; False when it is no longer queued or a live owner holds it. A claim of a process that is
        gone (its server died before the job started) is taken over."""
        owner = owner or me()
        with fileio.lock(self.folder / "claim.json"):
            try:
                rec = fileio.read_json(self.folder / "status.json", {}) or {}
                held = fileio.read_json(self.folder / "claim.json")
            except ValueError:
                return False
            if rec.get("state") != "queued":
                return False
            if held and held.get("queue") != owner.get("queue") and owner_alive(held):
                return False
            fileio.write_json(self.folder / "claim.json", {**owner, "claimed": time.time()})
            return True

    def claimed_by(self) -> dict | None:
        try:
            return fileio.read_json(self.folder / "claim.json")
        except ValueError:
            return None


class JobWriter:
    """The one writer of what a running job tells: progress.json (replaced whole, so never read torn) and
    events.jsonl (a line appended and flushed per event). The worker writes through it, and so does the server
    that receives a Ray task's messages."""

    def __init__(self, job: Job):
        self.job = job
        self._events = None

    def write_progress(self, state: dict) -> None:
        fileio.write_bytes(self.job.folder / "progress.json", json.dumps(state).encode())

    def append_event(self, record: dict) -> None:
        if self._events is None:
            self._events = open(self.job.folder / "events.jsonl", "a")
        self._events.write(json.dumps(record) + "\n")
        self._events.flush()

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None


def create(folder: str | Path, kind: str, payload: dict, lab: str | None = None) -> Job:
    """A new job folder (or an empty one) in state queued. `payload` is what the worker needs (see `worker.execute`)."""
    if kind not in KINDS:
        raise JobError(f"unknown job kind '{kind}'")
    folder = Path(folder)
    if not (folder.is_dir() and not any(folder.iterdir())):  # an empty folder (the CLI's --out) is taken as is
        try:
            folder.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise JobError(f"{folder} already exists and is not empty: choose a new folder") from None
    fileio.write_json(folder / "job.json", {"kind": kind, "lab": lab, "created": time.time(), **payload},
                      indent=None)
    job = Job(folder)
    job.write_status(state="queued", created=time.time(), lab=lab, kind=kind)
    return job


def list_jobs(root: str | Path) -> list[Job]:
    """Every job and run folder under `root`, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
             and ((p / "job.json").is_file() or (p / "config.json").is_file() or (p / "status.json").is_file())]
    return [Job(p) for p in sorted(found, key=lambda p: p.name, reverse=True)]


def active_in(runs_dir: str | Path, exclude: Job | None = None) -> Job | None:
    """The queued or running job among a lab's run folders (any server's), else None."""
    skip = Path(exclude.folder).resolve() if exclude is not None else None
    for job in list_jobs(runs_dir):
        if job.active and (skip is None or job.folder.resolve() != skip):
            return job
    return None


def home_jobs(labs_root: str | Path | None = None) -> list[tuple[Job, dict]]:
    """(job, status) of every job folder in the lab home that has a status, oldest first."""
    labs_root = labs.labs_dir() if labs_root is None else labs_root
    found = []
    for status in Path(labs_root).glob("*/runs/*/status.json"):
        job = Job(status.parent)
        found.append((job, job.status()))
    return sorted(found, key=lambda t: (t[1].get("queued") or t[1].get("created") or 0, t[0].id))


def ahead_in_home(job: Job, labs_root: str | Path | None = None) -> int:
    """How many jobs of the whole lab home (every server's) will start or finish before this queued job
    starts: those queued before it and those running, for the same kind of device. 0 when it is not queued."""
    rec = job.status()
    if rec.get("state") != "queued":
        return 0
    pool, when = rec.get("pool", "cpu"), rec.get("queued") or rec.get("created") or 0
    count = 0
    for other, ost in home_jobs(labs_root):
        if other.folder.resolve() == job.folder.resolve():
            continue
        if not _shares(ost.get("slot") or ost.get("pool", "cpu"), pool) and not _shares(ost.get("pool", "cpu"), pool):
            continue
        if ost.get("state") == "running":
            count += 1
        elif ost.get("state") == "queued" and (ost.get("queued") or ost.get("created") or 0) < when:
            count += 1
    return count


def _shares(a: str, b: str) -> bool:
    """Whether jobs for pools `a` and `b` compete for the same slots."""
    if a == b:
        return True
    return a.startswith("cuda") and b.startswith("cuda") and "cuda" in (a, b)
