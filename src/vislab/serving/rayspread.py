"""A transfer study spread over a Ray cluster: one Ray task per group of rows, the groups side by side.

A study's rows fall into groups that share no cached work (`training.study.groups`: one per seed, since each
seed has its own split and initialisation); inside a group every depth and fraction shares one feature-cache
pool, so a group stays whole on one node and its frozen prefix is still paid about once. The job's own task
(rayqueue's `_task`) becomes the study's single writer: it submits the groups as tasks asking for what the
job asked for, forwards their events and rows into the job (events to the pages, rows to study.json), and
waits in `ray.wait`, which lends its CPUs to the groups (it does no work of its own meanwhile).

A group's task reads Stop from the hub as the job does, so Stop ends every group between batches and the
finished rows are kept; a group that fails fails the job, with its message. One group (one seed) trains in
the job's task itself: nothing to spread.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator

import ray
from ray.util.queue import Queue

POLL_S = 0.2  # how often the job's task looks for the groups' events while they train


@ray.remote(max_retries=0)
def _group(train: Callable, points: list, queue: Queue, make_stop: Callable, threads: int, env: dict) -> int:
    """One group of a study's rows on a Ray worker: its events and finished rows go to `queue`."""
    os.environ.update(env)
    from vislab.serving.worker import be_nice

    be_nice()
    import torch  # after be_nice (see worker.run_spare)

    torch.set_num_threads(max(1, int(threads)))
    n = 0
    for row in train(points, lambda name, e: queue.put(("event", name, e)), make_stop()):
        queue.put(("row", row))
        n += 1
    return n


def spreader(make_stop: Callable, options: dict, threads: int, env: dict):
    """The `spread` of training.study.run for a job on the cluster: `make_stop()` builds a group's Stop (the
    job's, read from the hub), `options` are the Ray resources each group asks for (the job's own)."""

    def spread(groups: list[list], train: Callable, on_event: Callable | None, stop) -> Iterator:
        if len(groups) == 1:  # one seed: nothing to spread, it trains here
            yield from train(groups[0], on_event, stop)
            return
        queue = Queue()
        pending = [_group.options(**options).remote(train, g, queue, make_stop, threads, env) for g in groups]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
                yield from _drain(queue, on_event)
                for ref in done:
                    ray.get(ref)  # a group's error fails the job, with its message
            yield from _drain(queue, on_event)  # a finished group's last puts are in the queue by now
        finally:
            for ref in pending:  # the job failed or was abandoned: no group trains on for nobody
                ray.cancel(ref, force=True)
            ray.kill(queue.actor)

    return spread


def _drain(queue: Queue, on_event: Callable | None) -> Iterator:
    """Forward the queued events, yield the queued rows, in the order they were sent."""
    for item in queue.get_nowait_batch(queue.qsize()) if queue.qsize() else ():
        if item[0] == "row":
            yield item[1]
        elif on_event is not None:
            on_event(item[1], item[2])
