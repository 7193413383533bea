"""Following the lab's job while it waits or runs: one fragment, polled from the job's files, for the Train
and Compare pages and the sidebar's run line.

Only the fragment reruns while it polls, once a second while the job runs and every few seconds while it
waits in the queue (a class of queued pages must not slow the job); `slower` stretches both (the sidebar's
line needs less). When the job leaves the queue the whole page is drawn again once, to poll at the running
rate and enable what a running job enables; when the job a page followed ends, the page is drawn again once
with its results.
"""

from __future__ import annotations

from typing import Callable

import streamlit as st

from pages import _jobs
from vislab.serving import events, jobs


def follow_job(kind: str | None, draw: Callable, *, mark: str | None = None, ended: Callable | None = None,
               slower: float = 1.0) -> None:
    """Draw the lab's active job of `kind` (None: any kind) with `draw(job)` (job None when there is none),
    again and again while it is active. `mark`: the session key that remembers the job followed; when it
    ends, `ended(job_id)` runs (if given) and the whole page is drawn again."""
    job = _jobs.active_job(kind)
    queued = job is not None and job.state == "queued"
    every = None if job is None else slower * (_jobs.POLL_QUEUED_S if queued else _jobs.POLL_RUNNING_S)
    st.fragment(_poll, run_every=every)(kind, draw, mark, ended, queued)


def _poll(kind: str | None, draw: Callable, mark: str | None, ended: Callable | None, was_queued: bool) -> None:
    ss = st.session_state
    job = _jobs.active_job(kind)
    if mark is not None and job is None and ss.get(mark):  # the job followed just ended: the page once more
        gone = ss.pop(mark)
        if ended is not None:
            ended(gone)
        st.rerun(scope="app")
    if was_queued and (job is None or job.state != "queued"):
        st.rerun(scope="app")  # it started (or left the queue): redraw the page, polling at the running rate
    if mark is not None and job is not None:
        ss[mark] = job.id
    draw(job)


def stoppable(stop_key: str):
    """A progress bar with a Stop button under it, for work a page does in its own script run (a click on Stop
    reruns the page, which ends the loop between steps). Returns (progress, holder): `holder.empty()` removes
    both once the work is done, so no finished bar or idle Stop is left on screen."""
    holder = st.empty()
    with holder.container():
        progress = st.progress(0.0, text="starting…")
        st.button("Stop", key=stop_key)
    return progress, holder


def queued_note(job: jobs.Job, then: str) -> None:
    """Where a queued job stands: how many jobs are ahead of it, and `then` (what happens next)."""
    n = _jobs.ahead(job)
    st.info(f"**Queued: {n} job{'s' if n != 1 else ''} ahead of you**{then}")


def runs_progress(job: jobs.Job, unit: str, then: str, total: int = 0) -> bool:
    """A job of several runs (a comparison's runs, a study's rows): queued, its note (`then`: what happens
    next); running, a bar "<unit> k of N: <name>" (`total`: N until the worker reports it) and the step's
    caption. True when it is running."""
    if job.state == "queued":
        queued_note(job, then)
        return False
    p = events.Progress.of(job.progress())
    n = max(p.runs or total, 1)
    st.progress(min(p.runs_done / n, 1.0), text=f"{unit} {min(p.runs_done + 1, n)} of {n}: {p.run or 'starting'}")
    st.caption(_jobs.progress_text(job)[1])
    return True


if __name__ == "__main__":  # opened as a page of its own (Streamlit's old pages-folder mode)
    from pages import _route

    _route.through_app()
