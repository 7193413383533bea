"""Training and compare jobs on a Ray cluster: the `jobqueue.Queue` interface and rules, as `LocalQueue` has.

Set `VISLAB_RAY_ADDRESS` (`ray://...` or `HOST:PORT` of `ray start --head`, or `local`) and the lab's server
submits each job as a Ray task that asks for what it needs, and Ray places and queues it:

    a CUDA job (device cuda or auto)   num_gpus=1, num_cpus=1 (the loop feeds the GPU from one core)
    a CPU job                          num_cpus=VISLAB_RAY_CPUS (default 1); torch uses that many threads

One core per CPU job by default because a class is many small jobs: torch's intra-op threads scale well
below linearly on our small models, so N one-core jobs side by side finish sooner in all than N jobs
taking turns with N cores each (bench/ray_queue.py measures this). A lone user on a big node can ask for more.

The task runs the worker's own code (`worker.execute` -> `experiment.prepare`, or `compare.run`), and writes the run folder straight into the lab home, which every node mounts at
the same path (NFS or the like): the dataset's images are read from the lab home anyway, and a checkpoint
written there each epoch survives the node that wrote it, so a node dying mid-job leaves an interrupted run
with its best epoch, as a killed local worker does (files shipped back at the end would die with the node).

Progress, Stop and the result go through Ray, not files: the task sends its progress and events to this
server's hub actor (`_Hub`, named `vislab-hub-<queue id>`), reads Stop from it, and returns how it ended.
The server writes what it receives into the job folder through the worker's own writer (`jobs.JobWriter`;
status.json through `Job.write_status`), so the pages, a reloaded tab and every other server sharing the lab
home read the job exactly as a local one.
Another server's Stop reaches the hub by its name (the job's status says which queue holds it).

This module imports ray; `vislab.serving.backends` (and so the pages) import it only when a Ray address is set.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray

from vislab.serving import events, rayspread
from vislab.serving.claims import HOST, me
from vislab.serving.jobqueue import BaseQueue
from vislab.serving.jobs import Job, JobError, JobWriter, create
from vislab.serving.worker import be_nice, execute

NAMESPACE = "vislab"


def address() -> str | None:
    """The Ray cluster of this server (VISLAB_RAY_ADDRESS), or None: then jobs run in local workers."""
    return os.environ.get("VISLAB_RAY_ADDRESS") or None


def cpus_per_job() -> int:
    try:
        return max(1, int(os.environ.get("VISLAB_RAY_CPUS", "1")))
    except ValueError:
        return 1


def resources(device: str) -> dict:
    """What a job asks Ray for: one GPU for a CUDA job (auto counts as CUDA when the cluster has GPUs),
    else `VISLAB_RAY_CPUS` cores."""
    gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0
    if device.startswith("cuda") or (device == "auto" and gpus > 0):
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_cpus": cpus_per_job(), "num_gpus": 0}


def connect(addr: str | None = None) -> None:
    """Join the cluster at `addr` (default VISLAB_RAY_ADDRESS) unless this process already has."""
    if ray.is_initialized():
        return
    addr = addr or address()
    if not addr:
        raise JobError("no Ray cluster: set VISLAB_RAY_ADDRESS (or pass --ray ADDRESS)")
    try:
        ray.init(address=addr, namespace=NAMESPACE, log_to_driver=False, ignore_reinit_error=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise JobError(f"cannot reach the Ray cluster at {addr} ({exc}); start it with `ray start --head` "
                            "or unset VISLAB_RAY_ADDRESS to train on this server") from None


# ---- the server's mailbox: events in, Stop out -------------------------------------------------------
@ray.remote(num_cpus=0)
class _Hub:
    """One per server (queue). Tasks `put` their progress and events; the server `take`s them (waiting up
    to `timeout` for the first); Stop is a flag per job that tasks read."""

    def __init__(self):
        self.box: list = []
        self.next: dict[str, int] = {}  # job id -> the sequence number it hands out next
        self.stops: set[str] = set()
        self.arrived = asyncio.Event()

    async def put(self, job_id: str, seq: int, kind: str, data: dict) -> None:
        self.box.append((job_id, seq, kind, data))
        self.arrived.set()

    async def take(self, timeout: float) -> list:
        out = self._in_order()
        if not out:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            out = self._in_order()
        return out

    def _in_order(self) -> list:
        """Each job's messages in the order it sent them, none past a gap: an async actor runs the `put`s of
        one caller in any order, so a later message can arrive first; it waits here for the ones before it."""
        out, keep = [], []
        for m in sorted(self.box, key=lambda m: (m[0], m[1])):
            if m[1] == self.next.get(m[0], 1):
                out.append(m)
                self.next[m[0]] = m[1] + 1
            else:
                keep.append(m)
        self.box = keep
        return out

    async def stop(self, job_id: str) -> None:
        self.stops.add(job_id)

    async def stopped(self, job_id: str) -> bool:
        return job_id in self.stops


def _hub_name(queue_id: str) -> str:
    return f"vislab-hub-{queue_id}"


# ---- the task side ------------------------------------------------------------------------------------
class _Sender:
    """The sink of a task's EventWriter: its progress and event records go to the server's hub, numbered so
    the hub hands them out in the order they were sent; `close` sends the last one and waits for it."""

    def __init__(self, hub, job_id: str):
        self.hub, self.job_id, self.seq = hub, job_id, 0

    def send(self, kind: str, data: dict, wait: bool = False):
        self.seq += 1
        ref = self.hub.put.remote(self.job_id, self.seq, kind, data)
        if wait:  # the last one: everything sent before it has reached the hub when the task returns
            ref.future().result(60)

    def write_progress(self, state: dict) -> None:
        self.send("progress", state)

    def append_event(self, record: dict) -> None:
        self.send("event", record)

    def close(self) -> None:
        self.send("end", {}, wait=True)


class RayStop:
    """The job's Stop as the training loop asks for it (an Event look-alike), asked of the hub at most every
    0.2 s. Never a blocking `ray.get`: Ray lends a blocked task's CPUs to the next queued task, which would
    run more jobs at once than the cluster has cores for; the answer is read when its future is done."""

    def __init__(self, hub, job_id: str):
        self.hub, self.job_id = hub, job_id
        self._set = False
        self._asked = 0.0
        self._answer = None  # concurrent.futures.Future of the hub's reply

    def is_set(self) -> bool:
        if self._set:
            return True
        if self._answer is not None and self._answer.done():
            self._set, self._answer = bool(self._answer.result()), None
        elif self._answer is None and time.monotonic() - self._asked > 0.2:
            self._asked = time.monotonic()
            self._answer = self.hub.stopped.remote(self.job_id).future()
        return self._set

    def wait_answer(self, timeout: float = 10) -> bool:
        """Ask once and wait for the reply (before training starts, when lending the CPUs does no harm)."""
        self._set = bool(self.hub.stopped.remote(self.job_id).future().result(timeout)) or self._set
        return self._set

    def set(self) -> None:
        self.hub.stop.remote(self.job_id)
        self._set = True


@ray.remote(max_retries=0)
def _task(folder: str, job_id: str, hub, threads: int, env: dict, res: dict | None = None) -> dict:
    """One job on a Ray worker: the worker process's own runner (`worker.execute`), events through the hub; a
    study's groups of rows spread over the cluster, each asking for the job's resources `res`."""
    os.environ.update(env)  # the lab home (the same path on every node) and the job's settings
    be_nice()  # as a local worker: a lab server on this node stays quick
    sender = _Sender(hub, job_id)
    ctx = ray.get_runtime_context()
    sender.send("started", {"pid": os.getpid(), "host": HOST, "node": ctx.get_node_id()})
    job, stop = Job(folder), RayStop(hub, job_id)
    if stop.wait_answer():  # Stop pressed while it waited in Ray's queue
        sender.close()
        return {"state": "cancelled", "message": "cancelled before it started"}
    writer = events.EventWriter(job, sink=sender)
    spread = rayspread.spreader(lambda: RayStop(hub, job_id), res or {"num_cpus": threads}, threads, env)
    outcome = execute(job, writer, stop, threads, spread)
    writer.close()  # its "end": the server finishes the job once everything before it is written
    return outcome


# ---- the server side ----------------------------------------------------------------------------------
END_GRACE_S = 10.0  # how long a returned task's last messages may still be on their way


@dataclass
class _Entry:
    job: Job
    ref: object
    lab: str | None
    files: JobWriter = field(init=False)
    started: bool = False
    ended: bool = False
    told_end: bool = False  # its task's last message ("end") was delivered
    done_at: float | None = None  # when its task was first seen returned

    def __post_init__(self):
        self.files = JobWriter(self.job)


class RayQueue(BaseQueue):
    """This server's jobs on a Ray cluster: the interface and rules of `jobqueue.BaseQueue`;
    `on_message(job, kind, data)` sees each message of a task as it arrives."""

    def __init__(self, addr: str | None = None, poll_s: float = 0.2, on_message=None, id: str | None = None):
        super().__init__(id)
        self.addr, self.poll_s, self.on_message = addr, poll_s, on_message
        connect(self.addr)
        self._hub = _Hub.options(name=_hub_name(self.id), namespace=NAMESPACE).remote()
        self._entries: dict[str, _Entry] = {}
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"vislab-ray-{self.id}", daemon=True)
        self._thread.start()

    # -- the backend's part of the shared rules
    def _enqueue(self, job: Job, lab: str | None, device: str, rec: dict) -> None:
        if not job.claim(me(queue=self.id)):
            raise JobError(f"job {job.id} was started by another server")
        res = resources(device)
        threads = res["num_cpus"] if not res["num_gpus"] else 1
        env = {k: v for k, v in os.environ.items() if k.startswith("VISLAB_") and k != "VISLAB_RAY_ADDRESS"}
        job.write_status(state="queued", queue=self.id, backend="ray", resources=res, queued=rec.get("queued") or
                         time.time(), pool="cuda" if res["num_gpus"] else "cpu", driver=me(queue=self.id))
        ref = _task.options(num_cpus=res["num_cpus"], num_gpus=res["num_gpus"]).remote(
            str(job.folder.resolve()), job.id, self._hub, threads, env, res)
        self._entries[job.id] = _Entry(job, ref, lab)

    def _held(self) -> list[tuple[Job, str | None]]:
        return [(e.job, e.lab) for e in self._entries.values() if not e.ended]

    def _busy(self, job: Job) -> bool:
        entry = self._entries.get(job.id)
        return entry is not None and not entry.ended

    # -- the rest of the interface
    def cancel(self, job: Job) -> None:
        """A queued job is cancelled at once, a running one stops after its batch (it keeps its best epoch);
        a job of another server sharing the lab home is stopped through that server's hub."""
        job.request_stop()  # for the record, and for a local worker if the job is not Ray's
        with self._lock:
            entry = self._entries.get(job.id)
            if entry is not None:
                self._hub.stop.remote(job.id)
                if not entry.started and not entry.ended:
                    ray.cancel(entry.ref)
                    entry.ended = True
                    job.write_status(state="cancelled", finished=time.time(), message="cancelled before it started")
                return
        queue_id = job.status().get("queue")
        if queue_id:
            try:
                ray.get_actor(_hub_name(queue_id), namespace=NAMESPACE).stop.remote(job.id)
            except ValueError:  # that server is gone: its job reads interrupted or is adopted
                pass

    def running_count(self) -> int:
        with self._lock:
            return sum(1 for e in self._entries.values() if e.started and not e.ended)

    def pending_count(self) -> int:
        with self._lock:
            return sum(1 for e in self._entries.values() if not e.started and not e.ended)

    def close(self, stop_running: bool = True, timeout: float = 30) -> None:
        with self._lock:
            live = [e for e in self._entries.values() if not e.ended]
        if stop_running:
            for e in live:
                self.cancel(e.job)
            deadline = time.time() + timeout
            while time.time() < deadline and any(not e.ended for e in live):
                time.sleep(0.1)
            for e in live:
                if not e.ended:
                    ray.cancel(e.ref, force=True)
        self._closed.set()
        self._thread.join(timeout=5)
        for e in live:
            e.files.close()
        try:
            ray.kill(self._hub)
        except Exception:  # the cluster is already gone
            pass

    # -- the dispatcher: messages from the tasks into the job folders, and the tasks' ends
    def _loop(self) -> None:
        while not self._closed.is_set():
            try:
                self._step()
            except Exception as exc:  # never die: it serves the whole class
                print(f"vislab ray queue: {type(exc).__name__}: {exc}", file=sys.stderr)
                time.sleep(self.poll_s)

    def _step(self) -> None:
        with self._lock:
            live = {e.ref: e for e in self._entries.values() if not e.ended}
        done = []
        if live:
            done, _ = ray.wait(list(live), num_returns=len(live), timeout=0)
        # a finished task's last message reached the hub before it returned: drain, then finish it once its
        # messages are all delivered (or after a grace, for a task that died without its "end")
        messages = ray.get(self._hub.take.remote(0 if done else self.poll_s))
        for job_id, _, kind, data in messages:
            self._deliver(job_id, kind, data)
        now = time.time()
        for ref in done:
            entry = live[ref]
            entry.done_at = entry.done_at or now
            if entry.told_end or now - entry.done_at > END_GRACE_S:
                self._finish(entry, ref)

    def _deliver(self, job_id: str, kind: str, data: dict) -> None:
        with self._lock:
            entry = self._entries.get(job_id)
        if entry is None:
            return
        job = entry.job
        if kind == "started":
            entry.started = True
            job.write_status(state="running", started=time.time(), worker=data, driver=me(queue=self.id),
                             host=data.get("host"), pid=data.get("pid"))
        elif kind == "progress":
            entry.files.write_progress(data)
        elif kind == "event":
            entry.files.append_event(data)
        elif kind == "end":
            entry.told_end = True
        if self.on_message is not None:
            self.on_message(job, kind, data)

    def _finish(self, entry: _Entry, ref) -> None:
        job = entry.job
        try:
            outcome = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            outcome = {"state": "cancelled", "message": "cancelled before it started"}
        except ray.exceptions.RayError as exc:  # the worker or its node died: the best epoch is in the lab home
            why = type(exc).__name__
            outcome = {"state": "interrupted",
                       "message": f"the Ray worker ended before the run finished ({why}: the node died or ran "
                                  "out of memory); the best epoch so far is kept"}
        entry.files.close()
        with self._lock:
            entry.ended = True
        if job.status().get("state") not in ("cancelled",):
            job.write_status(finished=time.time(), **outcome)


# ---- the CLI's path: one job, here, waited for --------------------------------------------------------
def run_job(folder: str | Path, task, device: str = "cpu", addr: str | None = None,
            on_event=None, timeout: float = 24 * 3600) -> dict:
    """Run one job on the cluster and wait for it (`vislab train/compare --ray ADDRESS`): `folder` (new or
    empty) becomes the run folder of `task` (a training.tasks TrainTask or CompareTask); `on_event(training.Event, run)` sees its epochs and batches as they arrive
    (`run`: the comparison's run name, None for a training job).
    Returns the final status. Ctrl-C stops the job (its best epoch is kept)."""

    def relay(job, kind, data):
        if on_event is None:
            return
        if kind == "event":
            on_event(events.decode(data), data.get("run"))
        elif kind == "progress" and (batch := events.batch_event(data)) is not None:
            on_event(batch, data.get("run"))

    q = RayQueue(addr=addr, on_message=relay)
    try:
        job = create(folder, task.kind, {**task.to_payload(), "device": device})
        q.submit(job, device)
        try:
            return q.wait(job, timeout)
        except KeyboardInterrupt:
            q.cancel(job)
            return q.wait(job, 120)
    finally:
        q.close(stop_running=True, timeout=30)
