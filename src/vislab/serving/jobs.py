"""Background jobs: training runs and comparisons in worker processes, through one queue per server.

A job is a folder (the run folder it becomes), and everything about it is a file in that folder, so a
reloaded page, a second tab or a restarted server reads the same state:

    job.json       what to run (kind, lab, spec, freeze plan, dataset report); written once, at submit
    status.json    state, pid, times, message; written by the queue (queued, cancelled) and the worker
    progress.json  the latest batch or caching step (epoch, batch, loss, phase, images cached, seconds)
    events.jsonl   one JSON line per phase, cache, epoch and end event
    stop           present once Stop is pressed; the worker checks it between batches
    claim.json     which server started the job (taken atomically: of two servers sharing a lab home, one runs it)
    worker.log     the worker's own output (a crash's traceback lands here)
    checkpoint/    the best epoch so far (runs.save_checkpoint); config.json ... model.safetensors when done

States: queued -> running -> done | stopped | error, or queued -> cancelled. A job whose status says
running but whose worker process is gone (the server or the machine died) reads as *interrupted*; its
checkpoint loads and resumes.

Workers are separate Python processes (`python -m vislab.serving.jobs FOLDER`), never threads of the web server:
no page rerun or garbage collection of the server can stall training, and a worker that crashes or runs
out of memory cannot take the server down. `Queue` is the small interface the pages use; `LocalQueue`
runs jobs on this machine, FIFO, with `VISLAB_MAX_JOBS` jobs at once per device (default 1 on the CPU and
1 per CUDA GPU), and at most one queued or running job per lab. `vislab.serving.rayqueue.RayQueue` is the same
interface on a Ray cluster.

Several servers may share one lab home (`VISLAB_HOME`): the job folders are the truth, so `active_for` and
`ahead` read them, and a server starts a job only after claiming it (`Job.claim`, under a file lock), so a
job queued by one server and adopted by another after a restart still runs once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vislab import _fileio as fileio

ACTIVE = ("queued", "running")
FINAL = ("done", "stopped", "error", "cancelled", "interrupted")
KINDS = ("train", "compare")
PROGRESS_EVERY_S = 0.25  # the worker writes progress.json at most this often


class JobError(ValueError):
    """A job that cannot be submitted or run (its lab already has one, bad settings): the message says why."""


# ---- one job, read from its folder -------------------------------------------------------------------
@dataclass
class Job:
    folder: Path

    def __post_init__(self):
        self.folder = Path(self.folder)

    @property
    def id(self) -> str:
        return self.folder.name

    def spec(self) -> dict:
        return fileio.read_json(self.folder / "job.json", {}) or {}

    def status(self) -> dict:
        """The status record; a running job whose worker is gone reads as interrupted."""
        try:
            rec = fileio.read_json(self.folder / "status.json", {}) or {}
        except ValueError:
            rec = {}
        if not rec:  # a run folder from before jobs existed, or one the CLI wrote
            from vislab.training import runs

            return {"state": "done" if runs.complete(self.folder) else "interrupted"}
        if rec.get("state") == "running" and not _running_alive(rec):
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


def create(folder: str | Path, kind: str, payload: dict, lab: str | None = None) -> Job:
    """A new job folder (or an empty one) in state queued. `payload` is what the worker needs (see `run_worker`)."""
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
    if labs_root is None:
        from vislab.serving import labs

        labs_root = labs.labs_dir()
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


HOST = socket.gethostname()


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat): with the pid, names one process even
    after its pid is recycled. None where /proc is missing."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def me(**extra) -> dict:
    """This process as the owner of a claim or a Ray-driven job: host, pid and the pid's start time."""
    return {"host": HOST, "pid": os.getpid(), "pid_start": _start_time(os.getpid()), **extra}


def owner_alive(owner: dict) -> bool:
    """Whether the process of an owner record still runs. A process of another host cannot be seen from
    here: it counts as alive (its own server marks the job when it ends)."""
    if not isinstance(owner, dict):
        return False
    if owner.get("host") not in (None, HOST):
        return True
    pid = owner.get("pid")
    if not _pid_exists(pid):
        return False
    start = owner.get("pid_start")
    return start is None or _start_time(pid) in (None, start)


def _pid_exists(pid) -> bool:
    """A live process has this pid (one of another user's counts)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _running_alive(rec: dict) -> bool:
    """Whether a running job still has its process: the Ray driver that follows it (`driver`), else the
    local worker (`pid`, on `host`)."""
    if isinstance(rec.get("driver"), dict):
        return owner_alive(rec["driver"])
    if rec.get("host") not in (None, HOST):
        return True  # a worker on another server of a shared lab home: that server marks it
    return _alive(rec.get("pid"))


def _alive(pid) -> bool:
    """Whether `pid` is a vislab worker that still runs."""
    if not _pid_exists(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.parent.parent.is_dir() and Path("/proc/self").exists():
        try:  # a recycled pid of another program is not our worker
            return b"vislab.serving.jobs" in cmdline.read_bytes()
        except OSError:
            return False
    return True


# ---- the queue interface -----------------------------------------------------------------------------
class Queue(Protocol):
    """What the pages need from a job queue; a cluster backend implements the same four calls."""

    def submit(self, job: Job, device: str = "cpu") -> Job: ...

    def cancel(self, job: Job) -> None: ...

    def ahead(self, job: Job) -> int: ...

    def active_for(self, lab: str) -> Job | None: ...


def max_jobs() -> int:
    try:
        return max(1, int(os.environ.get("VISLAB_MAX_JOBS", "1")))
    except ValueError:
        return 1


def device_pools() -> dict[str, int]:
    """Job slots per device: 'cpu' and, where there are GPUs, 'cuda:0', 'cuda:1', ..."""
    pools = {"cpu": max_jobs()}
    try:
        import torch

        for i in range(torch.cuda.device_count()):
            pools[f"cuda:{i}"] = max_jobs()
    except Exception:  # no torch build with CUDA: CPU only
        pass
    return pools


def pool_for(device: str) -> str:
    """'cpu' or 'cuda' (any GPU) for a job's device choice (auto picks CUDA when there is one)."""
    pools = device_pools()
    if device.startswith("cuda") or (device == "auto" and len(pools) > 1):
        return device if device in pools else "cuda"
    return "cpu"


@dataclass
class _Entry:
    job: Job
    pool: str  # "cpu", "cuda" (any GPU) or "cuda:N"
    lab: str | None
    proc: subprocess.Popen | None = None
    slot: str | None = None


@dataclass
class LocalQueue:
    """Jobs of every session of this server, run FIFO in worker processes on this machine."""

    pools: dict[str, int] = field(default_factory=device_pools)
    poll_s: float = 0.2
    python: str = sys.executable
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    spares: bool = False  # keep one started worker per slot waiting (torch imported): a job starts in ~0 s, not ~5

    def __post_init__(self):
        self._lock = threading.RLock()
        self._pending: list[_Entry] = []
        self._running: list[_Entry] = []
        self._spare: dict[str, subprocess.Popen] = {}  # slot -> a worker waiting for its job folder on stdin
        self._closed = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"vislab-queue-{self.id}", daemon=True)
        self._thread.start()

    # -- the interface
    def submit(self, job: Job, device: str = "cpu") -> Job:
        lab = job.spec().get("lab")
        with self._lock:
            if any(e.job.folder == job.folder for e in self._pending + self._running):
                return job  # already in this queue (a second submit of the same folder is a no-op)
            rec = job.status()
            if rec.get("state") != "queued":
                raise JobError(f"job {job.id} is {rec.get('state')}: only a new job can be queued")
            if lab is not None and self._active_other(lab, job) is not None:
                raise JobError("this lab already has a job queued or running: wait for it, or stop it first")
            pool = pool_for(device)
            self._pending.append(_Entry(job, pool, lab))
            job.write_status(state="queued", queue=self.id, pool=pool, queued=rec.get("queued") or time.time())
        self._wake.set()
        return job

    def cancel(self, job: Job) -> None:
        """A queued job is cancelled at once (this server's or another's: the claim makes sure nobody starts
        it meanwhile); a running one is asked to stop (it keeps its best epoch)."""
        with self._lock:
            self._pending = [e for e in self._pending if e.job.folder != job.folder]
            if job.claim(me(queue=self.id)):
                job.write_status(state="cancelled", finished=time.time(), message="cancelled before it started")
                return
        job.request_stop()

    def ahead(self, job: Job) -> int:
        """How many jobs will start or finish before this queued job starts (0 when it is running), counted
        from the job folders, so the jobs of every server sharing this lab home count."""
        return ahead_in_home(job, Path(job.folder).parents[2])

    def active_for(self, lab: str) -> Job | None:
        """The lab's queued or running job, this server's or another's (read from the lab's folder)."""
        return self._active_other(lab, None)

    def _active_other(self, lab: str, job: Job | None) -> Job | None:
        with self._lock:
            for e in self._running + self._pending:  # a finished worker not yet reaped holds no job any more
                if e.lab == lab and (job is None or e.job.folder != job.folder) and e.job.active:
                    return e.job
        from vislab.serving import labs

        try:
            return active_in(labs.Lab(lab).runs_dir, exclude=job)
        except labs.LabError:  # not a lab id (a test's or the CLI's own folder): this queue's jobs only
            return None

    def running_count(self) -> int:
        with self._lock:
            return len(self._running)

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    def adopt(self, root: str | Path) -> int:
        """After a restart: queue again the jobs under `root` (labs' runs folders) still marked queued.
        Running ones whose worker is gone already read as interrupted (Job.status)."""
        found = []
        for folder in Path(root).glob("*/runs/*/status.json"):
            job = Job(folder.parent)
            rec = job.status()
            held = job.claimed_by()
            if rec.get("state") == "queued" and not (held and owner_alive(held)):  # not being started elsewhere
                found.append((rec.get("created", 0), job))
        for _, job in sorted(found, key=lambda t: t[0]):
            try:
                self.submit(job, job.spec().get("device", "cpu"))
            except JobError:
                job.write_status(state="cancelled", message="its lab had another job when the server restarted")
        return len(found)

    def close(self, stop_running: bool = True, timeout: float = 30) -> None:
        """Stop the dispatcher; running workers are asked to stop (and then killed if they do not)."""
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout=5)
        with self._lock:
            running = list(self._running)
            spares, self._spare = list(self._spare.values()), {}
        for proc in spares:  # waiting workers hold no job: end them now
            proc.kill()
            proc.wait()
        if stop_running:
            for e in running:
                e.job.request_stop()
            deadline = time.time() + timeout
            for e in running:
                try:
                    e.proc.wait(timeout=max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    e.proc.kill()

    def wait(self, job: Job, timeout: float = 600) -> dict:
        """Block until `job` ends (for the CLI and tests); returns its final status."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            rec = job.status()
            if rec.get("state") in FINAL:
                with self._lock:
                    if not any(e.job.folder == job.folder for e in self._running):
                        return rec
            time.sleep(0.1)
        raise TimeoutError(f"job {job.id} still {job.state} after {timeout:.0f} s")

    # -- the dispatcher
    def _loop(self) -> None:
        # every worker is started from this thread: PR_SET_PDEATHSIG fires when the *thread* that started a
        # child ends, and the thread that made the queue (a Streamlit script run) ends in a moment
        if self.spares:
            with self._lock:
                for slot in self.pools:
                    self._spare[slot] = self._start_spare(slot)
        while not self._closed.is_set():
            try:
                self._reap()
                self._start_ready()
            except Exception as exc:  # the dispatcher must never die: it serves the whole class
                print(f"vislab queue: {type(exc).__name__}: {exc}", file=sys.stderr)
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _reap(self) -> None:
        with self._lock:
            for e in list(self._running):
                code = e.proc.poll()
                if code is None:
                    continue
                self._running.remove(e)
                rec = fileio.read_json(e.job.folder / "status.json", {}) or {}
                if rec.get("state") in ("queued", "running"):  # the worker died without a word
                    why = "killed (out of memory?)" if code in (-9, 137) else f"exit code {code}"
                    e.job.write_status(state="interrupted", finished=time.time(),
                                       message=f"the worker process ended unexpectedly ({why}); the best "
                                               "epoch so far is kept. See worker.log in the run folder.")

    def _free_slot(self, pool: str) -> str | None:
        names = [p for p in self.pools if p == pool or (pool == "cuda" and p.startswith("cuda:"))]
        for name in names:
            used = sum(1 for r in self._running if r.slot == name)
            if used < self.pools[name]:
                return name
        return None

    def _start_ready(self) -> None:
        with self._lock:
            busy_labs = {r.lab for r in self._running if r.lab is not None}
            for e in list(self._pending):
                if e.lab is not None and e.lab in busy_labs:
                    continue
                slot = self._free_slot(e.pool)
                if slot is None:
                    continue
                if e.job.stop_requested and e.job.claim(me(queue=self.id)):  # Stop through the file while queued
                    self._pending.remove(e)
                    e.job.write_status(state="cancelled", finished=time.time(), message="cancelled before it started")
                    continue
                self._pending.remove(e)
                if not e.job.claim(me(queue=self.id)):  # another server sharing the home started or cancelled it
                    continue
                e.slot = slot
                e.proc = self._spawn(e.job, slot)
                self._running.append(e)
                busy_labs.add(e.lab)

    def _env(self, slot: str) -> dict:
        env = {**os.environ, "VISLAB_PARENT_PID": str(os.getpid()),
               "VISLAB_THREADS": str(max(1, (os.cpu_count() or 1) // max(1, self.pools.get("cpu", 1))))}
        if slot.startswith("cuda:"):
            env["CUDA_VISIBLE_DEVICES"] = slot.split(":", 1)[1]
        src = str(Path(__file__).resolve().parents[1])  # the worker imports this very vislab
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def _start_spare(self, slot: str) -> subprocess.Popen:
        """A worker for `slot` that imports torch and vislab now and then waits for one job folder."""
        return subprocess.Popen([self.python, "-m", "vislab.serving.jobs", "--spare"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self._env(slot))

    def _hand_to_spare(self, job: Job, slot: str) -> subprocess.Popen | None:
        """Give `job` to the slot's waiting worker (None when there is none, or it has died)."""
        proc = self._spare.pop(slot, None)
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                proc.stdin.write(f"{job.folder}\n".encode())
                proc.stdin.close()  # one job per process: a crash or a leak never reaches the next job
                return proc
            except (OSError, ValueError):
                pass
        proc.kill()
        return None

    def _spawn(self, job: Job, slot: str) -> subprocess.Popen:
        proc = self._hand_to_spare(job, slot) if self.spares else None
        if proc is None:
            log = open(job.folder / "worker.log", "ab")
            try:
                proc = subprocess.Popen([self.python, "-m", "vislab.serving.jobs", str(job.folder)], stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env(slot),
                                        cwd=str(job.folder))
            finally:
                log.close()
        job.write_status(state="running", slot=slot, started=time.time(), pid=proc.pid, host=HOST)  # before the worker's own
        if self.spares and not self._closed.is_set():
            self._spare[slot] = self._start_spare(slot)  # the next job of this slot starts warm
        return proc


def _shares(a: str, b: str) -> bool:
    """Whether jobs for pools `a` and `b` compete for the same slots."""
    if a == b:
        return True
    return a.startswith("cuda") and b.startswith("cuda") and "cuda" in (a, b)


# ---- the worker: runs in its own process --------------------------------------------------------------
class FileStop:
    """A threading.Event look-alike that is set when the job's `stop` file appears (checked at most every
    0.2 s, so the training loop can ask after every batch)."""

    def __init__(self, job: Job):
        self.job = job
        self._set = False
        self._checked = 0.0

    def is_set(self) -> bool:
        now = time.monotonic()
        if not self._set and now - self._checked > 0.2:
            self._checked = now
            self._set = self.job.stop_requested
        return self._set

    def set(self) -> None:
        self.job.request_stop()
        self._set = True


class EventWriter:
    """Turns training events into progress.json (throttled) and events.jsonl lines. A subclass that sends
    them elsewhere (the Ray backend sends them to the server that writes them) overrides `write_progress`
    and `write_event`."""

    def __init__(self, job: Job):
        self.job = job
        self.started = time.time()
        self.last = 0.0
        self.state: dict = {"started": self.started}
        self.message = ""  # how the job ended, when it is worth saying (a non-finite loss, stopped early)
        self._events = None

    def write_progress(self, state: dict) -> None:
        fileio.write_bytes(self.job.folder / "progress.json", json.dumps(state).encode())

    def write_event(self, record: dict) -> None:
        if self._events is None:
            self._events = open(self.job.folder / "events.jsonl", "a")
        self._events.write(json.dumps(record) + "\n")
        self._events.flush()

    def progress(self, force: bool = False, **fields) -> None:
        self.state.update(fields, seconds=time.time() - self.started)
        now = time.monotonic()
        if force or now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            self.write_progress(self.state)

    def event(self, e, run: str | None = None) -> None:
        extra = {"run": run} if run is not None else {}
        if e.kind == "batch":
            self.progress(stage="training", epoch=e.epoch, epochs=e.epochs, batch=e.batch, batches=e.batches,
                          loss=e.loss, phase=e.phase, **extra)
            return
        if e.kind == "caching":
            self.progress(stage="caching", epoch=e.epoch, epochs=e.epochs, cached=e.batch, to_cache=e.batches,
                          phase=e.phase, **extra)
            return
        record = {"kind": e.kind, "epoch": e.epoch, "epochs": e.epochs, "phase": e.phase, "message": e.message,
                  "metrics": e.metrics, "time": time.time() - self.started, **extra}
        self.write_event(record)
        if e.kind in ("phase", "cache"):  # no batch of the coming epoch yet: no batch count or loss to show
            for key in ("batch", "batches", "loss"):
                self.state.pop(key, None)
        # a phase begins by finding (and caching) its frozen part; after the cache event its epochs train;
        # after the end event the weights and predictions are written
        stage = {"phase": "preparing", "cache": "training", "epoch": "training", "end": "finishing"}.get(e.kind)
        self.progress(force=True, epoch=e.epoch, epochs=e.epochs, phase=e.phase, **extra,
                      **({"stage": stage} if stage else {}))

    def close(self) -> None:
        if self._events is not None:
            self._events.close()


def _die_with_parent() -> None:
    """Linux: end this worker when the server that started it dies (its run then reads as interrupted)."""
    parent = os.environ.get("VISLAB_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != parent:  # the server died before prctl took effect
        os._exit(3)


def _be_nice() -> None:
    """Training yields the CPU to the web server: a page switch stays quick while a class trains, and the
    worker still has every core the server does not use. `VISLAB_WORKER_NICE` (default 10; 0 turns it off)
    is the level the worker runs at, not an increment: a spare worker that was niced already stays there."""
    try:
        level = int(os.environ.get("VISLAB_WORKER_NICE", "10"))
        os.setpriority(os.PRIO_PROCESS, 0, max(level, os.getpriority(os.PRIO_PROCESS, 0)))
    except (OSError, ValueError, AttributeError):
        pass


def run_spare() -> int:
    """A spare worker (`python -m vislab.serving.jobs --spare`): pays for the imports while nobody waits, then reads
    one job folder from stdin and runs it like a fresh worker, its output going to that job's worker.log."""
    _die_with_parent()
    _be_nice()  # the imports do not slow the job that is running now
    import torch  # noqa: F401 - the expensive part of a worker's start
    import torchvision  # noqa: F401

    from vislab.training import compare, engines, experiment  # noqa: F401

    engines.preload()
    line = sys.stdin.readline().strip()
    if not line or not Path(line, "job.json").is_file():
        return 0  # the queue closed (or gave nothing): nothing was started
    fd = os.open(Path(line) / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.chdir(line)
    return run_worker(line)


def run_worker(folder: str | Path) -> int:
    """Run the job in `folder` in this process and record how it ended. Returns an exit status."""
    job = Job(folder)
    _die_with_parent()
    _be_nice()
    job.write_status(state="running", pid=os.getpid(), started=time.time())
    writer = EventWriter(job)
    try:
        outcome = execute(job, writer, FileStop(job), os.environ.get("VISLAB_THREADS"))
        job.write_status(finished=time.time(), **outcome)
    finally:
        writer.close()
    return 1 if outcome["state"] == "error" else 0


def execute(job: Job, writer: EventWriter, stop, threads: int | str | None = None) -> dict:
    """Run the job's payload (job.json) here with `writer` for its events and `stop` (an Event look-alike);
    returns how it ended, {"state": done | stopped | error, "message": ...}, and never raises. The one job
    runner of the worker process and of a Ray task (vislab.serving.rayqueue)."""
    writer.progress(force=True, stage="starting")
    try:
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        payload = job.spec()
        if payload.get("kind") == "compare":
            _run_compare(job, payload, writer, stop)
        else:
            _run_train(job, payload, writer, stop)
        return {"state": "stopped" if stop.is_set() else "done", "message": writer.message}
    except Exception as exc:
        import traceback

        traceback.print_exc()
        return {"state": "error", "message": _explain(exc)}
    finally:
        writer.progress(force=True, stage="finished")


def _explain(exc: Exception) -> str:
    import torch

    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return "out of memory: use a smaller batch size or image size"
    if isinstance(exc, ValueError):  # the library's own explained errors (DataError, WeightsError, sizes)
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _run_train(job: Job, payload: dict, writer: EventWriter, stop: FileStop) -> None:
    from vislab.data import folders as data
    from vislab.training import experiment

    report = data.report_from_dict(payload["report"])
    spec = experiment.Spec.from_dict(payload["spec"])
    writer.progress(force=True, stage="building", model=spec.model, images=len(report.items))
    if payload.get("resume"):
        result = experiment.resume(payload["resume"], report, spec.train.epochs, job.folder, writer.event, stop)
    else:
        prepared = experiment.prepare(spec, len(report.classes), plan=payload.get("plan"))
        result = experiment.train(spec, report, job.folder, writer.event, stop, prepared=prepared,
                                  checkpoints=True, predictions=True)
    if result.history.failure:
        writer.message = result.history.failure
    if not result.history.epochs:
        writer.message = "stopped before the first epoch finished: nothing to keep"


def _run_compare(job: Job, payload: dict, writer: EventWriter, stop: FileStop) -> None:
    from vislab.training import compare
    from vislab.data import folders as data

    report = data.report_from_dict(payload["report"])
    configs = [compare.Config(**c) for c in payload["configs"]]
    done = []

    def on_event(name, e):
        if e.kind == "end":
            done.append(name)
        writer.progress(runs_done=len(done), runs=len(configs))
        writer.event(e, run=name)

    compare.run(payload["model"], report, configs, payload["epochs"], job.folder, img_size=payload.get("img_size"),
                batch_size=payload.get("batch_size", 32), seed=payload.get("seed", 0), on_event=on_event, stop=stop,
                per_class=payload.get("per_class"), engine=payload.get("engine", "auto"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--spare"]:
        return run_spare()
    if len(argv) != 1 or not Path(argv[0], "job.json").is_file():
        print("usage: python -m vislab.serving.jobs JOB_FOLDER (a folder with job.json)", file=sys.stderr)
        return 2
    return run_worker(argv[0])


if __name__ == "__main__":
    sys.exit(main())
