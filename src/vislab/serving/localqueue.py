"""Jobs on this machine: each runs in a worker process (vislab.serving.worker), FIFO, with `VISLAB_MAX_JOBS`
jobs at once per device (default 1 on the CPU and 1 per CUDA GPU), and at most one queued or running job per
lab (the shared rules of `jobqueue.BaseQueue`).

Several servers may share one lab home (`VISLAB_HOME`): the job folders are the truth, and a server starts a
job only after claiming it (`Job.claim`, under a file lock), so a job queued by one server and adopted by
another after a restart still runs once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vislab import _fileio as fileio
from vislab.serving.claims import HOST, WORKER_MODULE, me
from vislab.serving.jobqueue import BaseQueue
from vislab.serving.jobs import Job


def max_jobs() -> int:
    try:
        return max(1, int(os.environ.get("VISLAB_MAX_JOBS", "1")))
    except ValueError:
        return 1


def device_pools() -> dict[str, int]:
    """Job slots per device: 'cpu' and, where there are GPUs, 'cuda:0', 'cuda:1', ..."""
    pools = {"cpu": max_jobs()}
    try:
        import torch  # only to count the GPUs, when a queue is made: the pages import this module without it

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


class LocalQueue(BaseQueue):
    """Jobs of every session of this server, run FIFO in worker processes on this machine. `spares`: keep one
    started worker per slot waiting (torch imported), so a job starts in ~0 s, not ~5."""

    def __init__(self, pools: dict[str, int] | None = None, poll_s: float = 0.2, python: str = sys.executable,
                 id: str | None = None, spares: bool = False):
        super().__init__(id)
        self.pools = device_pools() if pools is None else pools
        self.poll_s, self.python, self.spares = poll_s, python, spares
        self._pending: list[_Entry] = []
        self._running: list[_Entry] = []
        self._spare: dict[str, subprocess.Popen] = {}  # slot -> a worker waiting for its job folder on stdin
        self._closed = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"vislab-queue-{self.id}", daemon=True)
        self._thread.start()

    # -- the backend's part of the shared rules
    def _enqueue(self, job: Job, lab: str | None, device: str, rec: dict) -> None:
        pool = pool_for(device)
        self._pending.append(_Entry(job, pool, lab))
        job.write_status(state="queued", queue=self.id, pool=pool, queued=rec.get("queued") or time.time())
        self._wake.set()

    def _held(self) -> list[tuple[Job, str | None]]:
        return [(e.job, e.lab) for e in self._running + self._pending]

    def _busy(self, job: Job) -> bool:
        return any(e.job.folder == job.folder for e in self._running)

    # -- the rest of the interface
    def cancel(self, job: Job) -> None:
        """A queued job is cancelled at once (this server's or another's: the claim makes sure nobody starts
        it meanwhile); a running one is asked to stop (it keeps its best epoch)."""
        with self._lock:
            self._pending = [e for e in self._pending if e.job.folder != job.folder]
            if job.claim(me(queue=self.id)):
                job.write_status(state="cancelled", finished=time.time(), message="cancelled before it started")
                return
        job.request_stop()

    def running_count(self) -> int:
        with self._lock:
            return len(self._running)

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    def spare_pids(self) -> dict[str, int]:
        """slot -> pid of the worker waiting there for the next job (torch imported), while it runs."""
        with self._lock:
            return {slot: p.pid for slot, p in self._spare.items() if p.poll() is None}

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
                self._pending.remove(e)
                if e.job.stop_requested and e.job.claim(me(queue=self.id)):  # Stop through the file while queued
                    e.job.write_status(state="cancelled", finished=time.time(), message="cancelled before it started")
                    continue
                if not e.job.claim(me(queue=self.id)):  # another server sharing the home started or cancelled it
                    continue
                e.slot = slot
                e.proc = self._spawn(e.job, slot)
                self._running.append(e)
                busy_labs.add(e.lab)

    # -- worker processes
    def _env(self, slot: str) -> dict:
        env = {**os.environ, "VISLAB_PARENT_PID": str(os.getpid()),
               "VISLAB_THREADS": str(max(1, (os.cpu_count() or 1) // max(1, self.pools.get("cpu", 1))))}
        if slot.startswith("cuda:"):
            env["CUDA_VISIBLE_DEVICES"] = slot.split(":", 1)[1]
        src = str(Path(__file__).resolve().parents[2])  # src/: the worker imports this very vislab
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def _start_spare(self, slot: str) -> subprocess.Popen:
        """A worker for `slot` that imports torch and vislab now and then waits for one job folder."""
        return subprocess.Popen([self.python, "-m", WORKER_MODULE, "--spare"], stdin=subprocess.PIPE,
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
                proc = subprocess.Popen([self.python, "-m", WORKER_MODULE, str(job.folder)], stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env(slot),
                                        cwd=str(job.folder))
            finally:
                log.close()
        job.write_status(state="running", slot=slot, started=time.time(), pid=proc.pid, host=HOST)  # before the worker's own
        if self.spares and not self._closed.is_set():
            self._spare[slot] = self._start_spare(slot)  # the next job of this slot starts warm
        return proc
