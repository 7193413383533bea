"""Background jobs for the pages: the server's one queue, submitting a lab's training or comparison, and
reading a job's progress and results back from its folder (vislab.serving.jobs, through the codec of
vislab.serving.events).

Nothing here trains: the queue starts a worker process per job. A page only writes a job folder, asks the
queue to run it, and reads files, so a reload, a second tab or a restarted server shows the same job.
It imports no torch at module level (the sidebar uses it on every page).
"""

from __future__ import annotations

import functools
import re
import time
from pathlib import Path

import streamlit as st

from pages._state import LAB, LAST_RUN, current_lab
from vislab import _fileio as fileio
from vislab.serving import backends, events, jobqueue, jobs, labs
from vislab.training.tasks import CompareTask, StudyTask, TrainTask


POLL_RUNNING_S = 1.0  # how often a page polls its lab's running job
POLL_QUEUED_S = 4.0  # ... and a queued one ("N ahead of you" changes only when a job ends)


@st.cache_resource
def queue() -> jobqueue.Queue:
    """The one queue of this server (every session's jobs): local workers, or the Ray cluster of
    VISLAB_RAY_ADDRESS. Jobs left queued by a previous server (and not being started by another server
    sharing this lab home) start again; running ones whose worker died read as interrupted."""
    import atexit

    q = backends.make_queue()
    q.adopt(labs.labs_dir())
    atexit.register(q.close)
    return q


def lab_jobs(kind: str | None = None) -> list[jobs.Job]:
    """This lab's jobs and runs, newest first (other labs' are never listed)."""
    if not st.session_state.get(LAB):
        return []
    found = jobs.list_jobs(current_lab().runs_dir)
    return [j for j in found if kind is None or job_kind(j) == kind]


def job_kind(job: jobs.Job) -> str:
    if (job.folder / "comparison.json").is_file():
        return "compare"
    try:
        stamp = (job.folder / "job.json").stat().st_mtime_ns
    except OSError:
        return "train"  # a run folder the CLI wrote
    return _kind_of(str(job.folder), stamp)


@functools.lru_cache(maxsize=4096)
def _kind_of(folder: str, stamp: int) -> str:
    """A job's kind from its job.json, read once per file version: the job.json holds the whole dataset
    report, and every page asks for the lab's jobs several times per rerun."""
    try:
        return jobs.Job(Path(folder)).payload().get("kind", "train")
    except ValueError:
        return "train"


def active_job(kind: str | None = None) -> jobs.Job | None:
    """The lab's queued or running job (at most one), read from disk, so every tab sees it."""
    for job in lab_jobs(kind):
        if job.active:
            return job
    return None


def new_folder(prefix: str) -> Path:
    lab = current_lab()
    lab.runs_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(100):
        folder = lab.runs_dir / (f"{stamp}_{prefix}" + (f"-{n}" if n else ""))
        if not folder.exists():
            return folder
    raise jobs.JobError("too many runs started this second")


def submit(task: TrainTask | CompareTask | StudyTask, prefix: str, device: str = "cpu") -> jobs.Job:
    """Queue `task` as a job of this lab; the queue's JobError when the lab already has one (a double click, a second
    tab), asked before the job folder is made, so a refused click leaves nothing behind."""
    from vislab.data.folders import safe_name

    q = queue()  # first: a new queue adopts queued jobs it finds, and must not find this one half-made
    lab = st.session_state[LAB]
    with fileio.lock(current_lab().runs_dir):  # one submit per lab at a time, on every server of this home
        q.check_free(lab)
        job = jobs.create(new_folder(safe_name(prefix)[:80] or task.kind), task.kind,
                          {**task.to_payload(), "device": device}, lab=lab)
        try:
            q.submit(job, device)
        except jobs.JobError:
            job.write_status(state="cancelled", message="not started: this lab already had a job")
            raise
    if task.kind == "train":
        st.session_state[LAST_RUN] = job.id
    return job


def stop(job: jobs.Job) -> None:
    """Stop a running job (it keeps its best epoch) or cancel a queued one."""
    queue().cancel(job)


def ahead(job: jobs.Job) -> int:
    return queue().ahead(job)


def describe(job: jobs.Job | None) -> str:
    """One line for the sidebar."""
    if job is None:
        return "—"
    rec = job.status()
    state = rec.get("state")
    if state == "queued":
        return f"queued, {ahead(job)} ahead"
    if state == "running":
        p = events.Progress.of(job.progress())
        stage = p.stage
        if stage == "caching":
            return f"caching features {p.cached}/{p.to_cache}"
        if stage == "building":
            return "building the model"
        if stage == "preparing":
            return "finding the frozen part"
        if stage in ("finishing", "finished"):
            return "saving the results"
        if stage == "training" and p.epochs:
            return f"training, epoch {p.epoch_now}/{p.epochs}"
        return "starting the worker"
    return f"{state}: `{job.id}`"


def sidebar_line() -> str:
    """The lab's active job, else its current run."""
    if not st.session_state.get(LAB):
        return "—"
    job = active_job()
    if job is None and st.session_state.get(LAST_RUN):
        folder = current_lab().runs_dir / st.session_state[LAST_RUN]
        job = jobs.Job(folder) if folder.is_dir() else None
    return describe(job)


def progress_text(job: jobs.Job) -> tuple[float, str]:
    """(fraction done, the line under the bar) for a running job: what the worker is doing now, from its
    progress.json; never a batch count or a loss before the first batch has run."""
    p = events.Progress.of(job.progress())
    seconds = time.time() - (p.started if p.started is not None else time.time())
    took = f" · {seconds:.0f} s"
    stage = p.stage
    epochs = max(p.epochs, 1)
    phase = f" ({p.phase})" if p.phase else ""
    if stage == "building":
        model = f" `{p.model}`" if p.model else ""
        return 0.0, f"building the model{model}: its pretrained weights, the new head and the freeze plan" + took
    if stage == "preparing":
        return (min(p.epoch / epochs, 1.0),
                f"epoch {p.epoch_now}/{epochs}{phase}: finding the frozen part of the network, which runs once "
                "over your images (its outputs are then reused every epoch)" + took)
    if stage == "caching":
        done, total = p.cached, max(p.to_cache, 1)
        return done / total * 0.999, (f"caching features: {done}/{total} images through the frozen layers "
                                      f"(once; the epochs then train from them)" + took)
    if stage in ("finishing", "finished"):
        return 1.0, "training ended: keeping the best epoch's weights and predicting the validation images" + took
    if stage != "training" or not p.epochs:
        return 0.0, "starting the worker process" + took
    epoch = p.epoch_now
    if not p.batch:  # between a cache (or epoch) event and the first batch of this epoch
        return min((epoch - 1) / epochs, 1.0), f"epoch {epoch}/{epochs}{phase}: first batch…" + took
    batch, batches = p.batch, max(p.batches, 1)
    done = (max(epoch - 1, 0) + batch / batches) / epochs
    loss = f" · loss {p.loss:.3f}" if isinstance(p.loss, (int, float)) else ""
    return min(max(done, 0.0), 1.0), f"epoch {epoch}/{epochs}{phase} · batch {batch}/{batches}{loss}" + took


_CACHED = re.compile(r"features cached: prefix \((?P<n>\d+) modules? up to '(?P<last>[^']+)'\) (?P<how>.*?), "
                     r"(?P<mib>\d+) MiB (?P<where>in memory|on disk); training runs from '(?P<boundary>[^']+)'")
_RUN_ONCE = re.compile(r"run once by (?P<engine>.+?), (?P<seconds>\d+(?:\.\d+)?) s \(")


def _seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 0.1 else f"{s:.1f} s"


def cache_story(message: str, images: int | None = None, epoch_seconds: float | None = None,
                done: bool = True) -> str:
    """A feature-cache line (feature_cache.Cache.describe, or "no feature cache: why") said for a learner: what ran
    once, over how many images, and what it saved per epoch. The engineering line stays as it was (for a
    tooltip or an expander). `done`: said of a finished run (else of one still training)."""
    were, ran = ("were", "trained") if done else ("are", "train")
    your = f"your {images} images" if images else "your images"
    if message.startswith("no feature cache:"):
        why = message.removeprefix("no feature cache:").strip()
        return (f"Every epoch {'ran' if done else 'runs'} {your} through the whole network (no part of it could be "
                f"run once: {why}).")
    m = _CACHED.match(message)
    if m is None:
        return message
    part = f"The frozen part of the network (up to `{m['last']}`)"
    if "shared with an earlier run" in m["how"]:
        return f"{part} had already been run over {your} by an earlier run; its outputs {were} reused every epoch."
    once = _RUN_ONCE.match(m["how"])
    seconds = float(once["seconds"]) if once else None
    line = f"{part} ran once over {your}" + (f" ({seconds:.1f} s)" if seconds is not None else "")
    line += f", and its outputs {were} reused every epoch"
    if seconds is not None and epoch_seconds is not None:
        line += (f": an epoch took {_seconds(epoch_seconds)} instead of about {_seconds(epoch_seconds + seconds)} "
                 "(running the frozen part over every image each epoch)")
    return line + f". Only the layers from `{m['boundary']}` on {ran}."


def cache_stories(job: jobs.Job, metrics: list[dict] | None = None, images: int | None = None,
                  done: bool = True) -> list[tuple[str, str]]:
    """(for a learner, the engineering line) per phase that reported its feature cache; `metrics` (epochs with
    their phase and seconds) gives the time per epoch, `images` the number of images (else from progress)."""
    images = images or events.Progress.of(job.progress()).images
    told = [e for e in map(events.decode, job.events()) if e.kind == "cache" and e.message]
    phases = {e.phase for e in told}
    out = []
    for e in told:
        mine = [m["seconds"] for m in metrics or [] if m.get("phase") == e.phase and not m.get("partial")
                and isinstance(m.get("seconds"), (int, float))]
        story = cache_story(e.message, images, sum(mine) / len(mine) if mine else None, done)
        if len(phases) > 1 and e.phase:
            story = f"Phase {e.phase}: {story}"
        out.append((story, e.message))
    return out


def totals(job: jobs.Job) -> str:
    """Honest timing of a finished job: per epoch, and in all (start-up and the caching pass included)."""
    rec = job.status()
    metrics = job.metrics()
    line = ""
    if metrics:
        per = sum(m["seconds"] for m in metrics) / len(metrics)
        n = len(metrics)
        line = f"{n} epoch{'s' if n != 1 else ''}, {per:.1f} s per epoch" if per >= 0.1 else \
            f"{n} epoch{'s' if n != 1 else ''}, {per * 1000:.0f} ms per epoch"
    if rec.get("started") and rec.get("finished"):
        line += (", " if line else "") + f"{rec['finished'] - rec['started']:.0f} s in all (start-up and the " \
                                          f"feature-caching pass included)"
    return line


@st.cache_resource(max_entries=8, show_spinner="Loading the run…")
def _load_run(path: str, mtime: int):
    from vislab.training import runs

    return runs.load(path)


def load_run(folder: Path):
    """(model, Run) of a run folder of this lab, cached per file version."""
    from vislab.training import runs

    lab = current_lab()
    if not lab.inside(folder):
        raise FileNotFoundError("that run is not in this lab")
    model_file = folder / "model.safetensors"
    if not model_file.is_file():
        ck = runs.checkpoint_of(folder)
        if ck is None:
            raise FileNotFoundError(f"{folder.name} has no saved weights (it ended before its first epoch)")
        model_file = ck / "model.safetensors"
    return _load_run(str(folder), model_file.stat().st_mtime_ns)


if __name__ == "__main__":  # opened as a page of its own (Streamlit's old pages-folder mode)
    from pages import _route

    _route.through_app()
