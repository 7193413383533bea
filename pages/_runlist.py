"""The lab's training runs as one table, read from their folders (each job's status, config, job spec and
epochs) only when one of their files changed."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages._results import stamp, when
from vislab.serving import jobs
from vislab.training import runs

COLUMNS = ("run", "date", "model", "head", "strategy", "epochs", "best val acc", "status")


def table(lab_jobs: list[jobs.Job]) -> list[dict]:
    """One row per job (newest first, as given); a running job's state is asked for each time (a job whose
    worker is gone changes no file)."""
    rows = _rows(tuple((str(j.folder), stamp(j.folder)) for j in lab_jobs))
    for row, job in zip(rows, lab_jobs):
        if row["status"] in jobs.ACTIVE:
            row["status"] = job.state
    return rows


@st.cache_data(max_entries=32, show_spinner=False)
def _rows(versions: tuple) -> list[dict]:
    """The rows of the jobs in `versions` ((folder, stamp) per job), read from their files."""
    return [_row(jobs.Job(Path(folder))) for folder, _ in versions]


def _row(j: jobs.Job) -> dict:
    status = j.status()
    try:
        cfg = runs.read_config(j.folder)
    except (OSError, ValueError):
        cfg = {}
    try:
        spec = j.experiment_spec() if (j.folder / "job.json").is_file() else {}
    except ValueError:
        spec = {}
    accs = [m["val_acc"] for m in (runs.read_metrics(j.folder) or j.metrics())]
    return {"run": j.id, "date": when(cfg.get("saved"), status.get("created") or status.get("queued"), j.id),
            "model": cfg.get("model") or spec.get("model"),
            "head": cfg.get("head_kind") or spec.get("head") or "linear",
            "strategy": cfg.get("strategy") or spec.get("strategy"), "epochs": len(accs),
            "best val acc": round(100 * max(accs), 1) if accs else None, "status": status.get("state")}


if __name__ == "__main__":  # opened as a page of its own (Streamlit's old pages-folder mode)
    from pages import _route

    _route.through_app()
