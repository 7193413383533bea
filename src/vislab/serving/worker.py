"""The worker: one job run in a Python process of its own (`python -m vislab.serving.worker FOLDER`), never in
a thread of the web server. No page rerun or garbage collection of the server can stall training, and a
worker that crashes or runs out of memory cannot take the server down.

A spare worker (`python -m vislab.serving.worker --spare`) pays for importing torch while nobody waits and then
reads one job folder from stdin (vislab.serving.localqueue keeps one per slot). `execute` is the one job
runner: of a worker process here and of a Ray task (vislab.serving.rayqueue), which also shares `be_nice`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from vislab.serving.claims import WORKER_MODULE
from vislab.serving.events import EventWriter
from vislab.serving.jobs import Job


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


def die_with_parent() -> None:
    """Linux: end this worker when the server that started it dies (its run then reads as interrupted)."""
    parent = os.environ.get("VISLAB_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != parent:  # the server died before prctl took effect
        os._exit(3)


def be_nice() -> None:
    """Training yields the CPU to the web server: a page switch stays quick while a class trains, and the
    worker still has every core the server does not use. `VISLAB_WORKER_NICE` (default 10; 0 turns it off)
    is the level the worker runs at, not an increment: a spare worker (or a reused Ray worker) that was
    niced already stays there."""
    try:
        level = int(os.environ.get("VISLAB_WORKER_NICE", "10"))
        os.setpriority(os.PRIO_PROCESS, 0, max(level, os.getpriority(os.PRIO_PROCESS, 0)))
    except (OSError, ValueError, AttributeError):
        pass


def run_spare() -> int:
    """A spare worker: pays for the imports while nobody waits, then reads one job folder from stdin and runs
    it like a fresh worker, its output going to that job's worker.log."""
    die_with_parent()
    be_nice()  # the imports do not slow the job that is running now
    # the expensive part of a worker's start, imported here and not at the top of the module: after be_nice, so
    # a spare's imports run at the worker's priority and never slow the job that is running now
    import torch  # noqa: F401
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
    die_with_parent()
    be_nice()
    job.write_status(state="running", pid=os.getpid(), started=time.time())
    writer = EventWriter(job)
    try:
        outcome = execute(job, writer, FileStop(job), os.environ.get("VISLAB_THREADS"))
        job.write_status(finished=time.time(), **outcome)
    finally:
        writer.close()
    return 1 if outcome["state"] == "error" else 0


def execute(job: Job, writer: EventWriter, stop, threads: int | str | None = None, spread=None) -> dict:
    """Run the job's payload (job.json) here with `writer` for its events and `stop` (an Event look-alike);
    returns how it ended, {"state": done | stopped | error, "message": ...}, and never raises. `spread`: where
    a study's groups of rows train (training.study.run; serving.rayspread on a cluster), None: here."""
    writer.progress(force=True, stage="starting")
    try:
        import torch  # after be_nice (see run_spare)

        if threads:
            torch.set_num_threads(int(threads))
        from vislab.training import tasks  # torch: after be_nice (see run_spare)

        payload = job.payload()
        task = tasks.from_payload(payload.get("kind", "train"), payload)
        if isinstance(task, tasks.CompareTask):
            _run_compare(job, task, writer, stop)
        elif isinstance(task, tasks.StudyTask):
            _run_study(job, task, writer, stop, spread)
        else:
            _run_train(job, task, writer, stop)
        return {"state": "stopped" if stop.is_set() else "done", "message": writer.message}
    except Exception as exc:
        traceback.print_exc()
        return {"state": "error", "message": _explain(exc)}
    finally:
        writer.progress(force=True, stage="finished")


def _explain(exc: Exception) -> str:
    import torch  # loaded by now: the job ran

    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return "out of memory: use a smaller batch size or image size"
    if isinstance(exc, ValueError):  # the library's own explained errors (DataError, WeightsError, sizes)
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _run_train(job: Job, task, writer: EventWriter, stop) -> None:
    """A TrainTask, its events into the job's files; a failure or an empty stop becomes the job's message."""
    writer.progress(force=True, stage="building", model=task.spec.model, images=len(task.report.items))
    result = task.run(job.folder, writer.event, stop)
    if result.history.failure:
        writer.message = result.history.failure
    if not result.history.epochs:
        writer.message = "stopped before the first epoch finished: nothing to keep"


def _run_compare(job: Job, task, writer: EventWriter, stop) -> None:
    """A CompareTask: each configuration's events tagged with its name, and how many have ended so far."""
    done = []

    def on_event(name, e):
        if e.kind == "end":
            done.append(name)
        writer.progress(runs_done=len(done), runs=len(task.configs))
        writer.event(e, run=name)

    task.run(job.folder, on_event, stop)


def _run_study(job: Job, task, writer: EventWriter, stop, spread=None) -> None:
    """A StudyTask: each row's events tagged with its name; runs_done/runs are the study's rows finished of all
    (a Resume starts with the rows it found), so a page says "row 5 of 16"."""
    from vislab.training import study  # torch: after be_nice (see run_spare)

    total = task.rows()
    found = study.load(task.where(job.folder))
    done = [len(found.rows) if found is not None and found.plan == task.plan else 0]
    writer.progress(force=True, runs_done=done[0], runs=total)

    def on_event(name, e):
        writer.progress(runs_done=done[0], runs=total)
        writer.event(e, run=name)

    def on_row(s):
        done[0] = len(s.rows)
        writer.progress(force=True, runs_done=done[0], runs=total, run="")  # the next row is not named until it starts

    result = task.run(job.folder, on_event, stop, on_row, spread)
    missing = len(result.missing())
    if missing and stop.is_set():
        writer.message = f"stopped with {len(result.rows)} of {total} rows finished (they are kept): Resume " \
                         "trains the rest"
    elif missing:
        writer.message = f"{missing} row(s) did not finish (a run that stopped early or failed): Resume trains them"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--spare"]:
        return run_spare()
    if len(argv) != 1 or not Path(argv[0], "job.json").is_file():
        print(f"usage: python -m {WORKER_MODULE} JOB_FOLDER (a folder with job.json)", file=sys.stderr)
        return 2
    return run_worker(argv[0])


if __name__ == "__main__":
    sys.exit(main())
