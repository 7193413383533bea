"""What a running job tells, and the one codec for it: training Events in, progress.json and events.jsonl
records out, and back.

A training loop reports `vislab.training.loop.Event`s. Batches and caching steps are too many to keep: they
update one progress record (progress.json, rewritten at most every PROGRESS_EVERY_S), which also says the
job's `stage` (starting, building, preparing, caching, training, finishing, finished). Phase, cache, epoch and
end events are each kept as a record (one line of events.jsonl). `EventWriter` does the encoding in the
process that trains; `decode` and `batch_event` turn records back into Events (the CLI's Ray path prints
them as a local run does), and `Progress` is a progress record as the pages read it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields

from vislab.serving.jobs import Job, JobWriter

PROGRESS_EVERY_S = 0.25  # the worker writes progress.json at most this often
# the stage a kept event starts: a phase begins by finding (and caching) its frozen part; after the cache
# event its epochs train; after the end event the weights and predictions are written
STAGE_AFTER = {"phase": "preparing", "cache": "training", "epoch": "training", "end": "finishing"}


# ---- encode: Event -> records -------------------------------------------------------------------------
def progress_fields(e) -> dict | None:
    """The progress update of a batch or caching step; None for an event that is kept as a record."""
    if e.kind == "batch":
        return {"stage": "training", "epoch": e.epoch, "epochs": e.epochs, "batch": e.batch, "batches": e.batches,
                "loss": e.loss, "phase": e.phase}
    if e.kind == "caching":
        return {"stage": "caching", "epoch": e.epoch, "epochs": e.epochs, "cached": e.cached, "to_cache": e.to_cache,
                "phase": e.phase}
    return None


def record(e, seconds: float, run: str | None = None) -> dict:
    """The events.jsonl record of a phase, cache, epoch or end event, `seconds` after the job started;
    `run` names the comparison's run it belongs to."""
    return {"kind": e.kind, "epoch": e.epoch, "epochs": e.epochs, "phase": e.phase, "message": e.message,
            "metrics": e.metrics, "time": seconds, **({"run": run} if run is not None else {})}


# ---- decode: records -> Event -------------------------------------------------------------------------
def decode(rec: dict):
    """An events.jsonl record as the training Event it was written from."""
    # torch: training.loop imports it, and the pages read this module on every rerun without needing Events
    from vislab.training.loop import Event

    return Event(kind=rec["kind"], epoch=rec.get("epoch", 0), epochs=rec.get("epochs", 0), metrics=rec.get("metrics"),
                 phase=rec.get("phase") or "", message=rec.get("message") or "")


def batch_event(progress: dict):
    """The batch Event a training progress record was written from, or None (another stage, or no batch yet)."""
    if progress.get("stage") != "training" or not progress.get("batches"):
        return None
    from vislab.training.loop import Event  # torch: as in `decode`

    return Event(kind="batch", epoch=progress.get("epoch", 0), epochs=progress.get("epochs", 0),
                 batch=progress.get("batch", 0), batches=progress["batches"], loss=progress.get("loss", 0.0),
                 phase=progress.get("phase") or "")


@dataclass(frozen=True)
class Progress:
    """A progress record as the pages read it (missing fields: nothing reported yet)."""

    stage: str = ""
    started: float | None = None
    model: str = ""  # building: the model being built
    images: int | None = None  # building: the dataset's size
    epoch: int = 0  # a batch's own epoch (1-based); at a phase or cache event, the epochs done
    epochs: int = 0
    batch: int = 0  # 0: no batch of this epoch yet
    batches: int = 0
    loss: float | None = None
    phase: str = ""
    cached: int = 0  # caching: images through the frozen part so far, of to_cache
    to_cache: int = 0
    run: str = ""  # a comparison: the run now training, runs_done of runs
    runs_done: int = 0
    runs: int = 0

    @classmethod
    def of(cls, rec: dict) -> Progress:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in rec.items() if k in known and v is not None})

    @property
    def epoch_now(self) -> int:
        """The epoch being trained: a batch's own epoch; before the first batch of an epoch (a phase or
        cache event, which count the epochs done), the next one."""
        return self.epoch if self.batch else min(self.epoch + 1, max(self.epochs, 1))


# ---- the writer in the process that trains ------------------------------------------------------------
class EventWriter:
    """Turns training events into the progress record (throttled) and event records, written through `sink`:
    the job's files (`JobWriter`, the default), or a Ray task's sender to the server that writes them."""

    def __init__(self, job: Job, sink=None):
        self.job = job
        self.sink = sink if sink is not None else JobWriter(job)
        self.started = time.time()
        self.last = 0.0
        self.state: dict = {"started": self.started}
        self.message = ""  # how the job ended, when it is worth saying (a non-finite loss, stopped early)

    def progress(self, force: bool = False, **update) -> None:
        self.state.update(update, seconds=time.time() - self.started)
        now = time.monotonic()
        if force or now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            self.sink.write_progress(dict(self.state))

    def event(self, e, run: str | None = None) -> None:
        extra = {"run": run} if run is not None else {}
        step = progress_fields(e)
        if step is not None:
            self.progress(**step, **extra)
            return
        self.sink.append_event(record(e, time.time() - self.started, run))
        if e.kind in ("phase", "cache"):  # no batch of the coming epoch yet: no batch count or loss to show
            for key in ("batch", "batches", "loss"):
                self.state.pop(key, None)
        stage = STAGE_AFTER.get(e.kind)
        self.progress(force=True, epoch=e.epoch, epochs=e.epochs, phase=e.phase, **extra,
                      **({"stage": stage} if stage else {}))

    def close(self) -> None:
        self.sink.close()
