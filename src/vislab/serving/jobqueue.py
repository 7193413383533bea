"""The job queue: the one interface the pages and the CLI use (`Queue`), and the rules every backend shares
(`BaseQueue`). The backends differ only in how a job runs: `localqueue.LocalQueue` in worker processes on
this machine, `rayqueue.RayQueue` as tasks on a Ray cluster.

The shared rules: at most one queued or running job per lab (`check_free`, the one refusal), a job is
submitted once and only while queued, `ahead` and `active_for` read the job folders (so the jobs of every
server sharing a lab home count), `adopt` queues again what a previous server left queued, and `wait`
returns once the job's status is final and its process or task is gone.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Protocol

from vislab.serving import labs
from vislab.serving.claims import owner_alive
from vislab.serving.jobs import FINAL, Job, JobError, active_in, ahead_in_home

BUSY = "this lab already has a job queued or running: wait for it, or stop it first"


class Queue(Protocol):
    """What the pages, the CLI and the benches call on a job queue."""

    id: str

    def submit(self, job: Job, device: str = "cpu") -> Job: ...

    def check_free(self, lab: str, job: Job | None = None) -> None: ...

    def cancel(self, job: Job) -> None: ...

    def ahead(self, job: Job) -> int: ...

    def active_for(self, lab: str) -> Job | None: ...

    def adopt(self, root: str | Path) -> int: ...

    def wait(self, job: Job, timeout: float = 600) -> dict: ...

    def running_count(self) -> int: ...

    def pending_count(self) -> int: ...

    def close(self, stop_running: bool = True, timeout: float = 30) -> None: ...


class BaseQueue:
    """The rules of every backend. A backend implements `_enqueue` (take a checked, queued job), `_held`
    (its jobs not yet ended, with their labs), `_busy` (whether a job's process or task still runs),
    `cancel`, `running_count`, `pending_count` and `close`."""

    def __init__(self, queue_id: str | None = None):
        self.id = queue_id or uuid.uuid4().hex[:8]
        self._lock = threading.RLock()

    # -- the backend's part
    def _enqueue(self, job: Job, lab: str | None, device: str, rec: dict) -> None:
        raise NotImplementedError

    def _held(self) -> list[tuple[Job, str | None]]:
        raise NotImplementedError

    def _busy(self, job: Job) -> bool:
        raise NotImplementedError

    # -- the shared rules
    def submit(self, job: Job, device: str = "cpu") -> Job:
        """Queue `job` (in state queued) to run on `device`; JobError when its lab already has a job. A
        second submit of a job this queue holds is a no-op."""
        lab = job.payload().get("lab")
        with self._lock:
            if any(held.folder == job.folder for held, _ in self._held()):
                return job
            rec = job.status()
            if rec.get("state") != "queued":
                raise JobError(f"job {job.id} is {rec.get('state')}: only a new job can be queued")
            if lab is not None:
                self.check_free(lab, job)
            self._enqueue(job, lab, device, rec)
        return job

    def check_free(self, lab: str, job: Job | None = None) -> None:
        """The one refusal: JobError when `lab` has a queued or running job other than `job` (a double click,
        a second tab, another server). The pages ask before they make a job folder, so a refusal leaves none."""
        if self._active_other(lab, job) is not None:
            raise JobError(BUSY)

    def active_for(self, lab: str) -> Job | None:
        """The lab's queued or running job, this server's or another's (read from the lab's folder)."""
        return self._active_other(lab, None)

    def _active_other(self, lab: str, job: Job | None) -> Job | None:
        """A job of `lab` other than `job` whose status is queued or running: one this queue holds (a job whose
        process ended but is not yet reaped, or whose last messages are on their way, is active exactly while
        its status file says so), else one in the lab's folder."""
        with self._lock:
            for held, held_lab in self._held():
                if held_lab == lab and (job is None or held.folder != job.folder) and held.active:
                    return held
        try:
            return active_in(labs.Lab(lab).runs_dir, exclude=job)
        except labs.LabError:  # not a lab id (a test's or the CLI's own folder): this queue's jobs only
            return None

    def ahead(self, job: Job) -> int:
        """How many jobs will start or finish before this queued job starts (0 when it is running), counted
        from the job folders, so the jobs of every server sharing this lab home count."""
        return ahead_in_home(job, Path(job.folder).parents[2])

    def adopt(self, root: str | Path) -> int:
        """After a restart: queue again the jobs under `root` (labs' runs folders) still marked queued and not
        held by a live server. Running ones whose process is gone already read as interrupted (Job.status)."""
        found = []
        for folder in Path(root).glob("*/runs/*/status.json"):
            job = Job(folder.parent)
            rec = job.status()
            held = job.claimed_by()
            if rec.get("state") == "queued" and not (held and owner_alive(held)):  # not being started elsewhere
                found.append((rec.get("created", 0), job))
        for _, job in sorted(found, key=lambda t: t[0]):
            try:
                self.submit(job, job.payload().get("device", "cpu"))
            except JobError:
                job.write_status(state="cancelled", message="its lab had another job when the server restarted")
        return len(found)

    def wait(self, job: Job, timeout: float = 600) -> dict:
        """Block until `job` ends (for the CLI and tests): its status is final and its process or task is gone.
        Returns its final status."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            rec = job.status()
            if rec.get("state") in FINAL:
                with self._lock:
                    if not self._busy(job):
                        return rec
            time.sleep(0.1)
        raise TimeoutError(f"job {job.id} still {job.state} after {timeout:.0f} s")
