"""The light part of the Streamlit layer: session keys, defaults, the sidebar and chart helper.

It imports no torch, so the first page can start drawing before the heavy libraries load;
`pages/_lab.py` has everything that needs models.
"""

from __future__ import annotations

import uuid

import streamlit as st

from vislab import catalog, paths

# ---- session state keys -------------------------------------------------------------------------------
MODEL = "model_name"  # catalog or any timm / torchvision name
HEAD = "head_kind"  # "linear" | "mlp"
DATASET = "dataset"  # Dataset below, or absent
PLAN = "plan"  # FreezePlan of the working model
STRATEGY = "strategy"  # the preset the plan came from, or "custom"
THAW_LAST = "thaw_last"
BN = "bn_thawed"
JOB = "job"  # TrainJob
WORKING = "working"  # (key, model, info): the session's own copy with a head for its classes
SESSION_ID = "session_id"


def init_state() -> None:
    ss = st.session_state
    ss.setdefault(MODEL, catalog.DEFAULT_MODEL)
    ss.setdefault(HEAD, "linear")
    ss.setdefault(STRATEGY, "head")
    ss.setdefault(THAW_LAST, 1)
    ss.setdefault(BN, "eval")
    ss.setdefault(SESSION_ID, uuid.uuid4().hex[:12])


PLOTLY_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


def chart(fig, key: str | None = None) -> None:
    """A plotly chart; its toolbar's camera button downloads it as PNG (for slides)."""
    st.plotly_chart(fig, width="stretch", config=PLOTLY_CONFIG, key=key)


def sidebar(where) -> None:
    """The current model, dataset, strategy and run, in the given sidebar container."""
    ss = st.session_state
    ds = ss.get(DATASET)
    where.markdown("### Current lab")
    where.markdown(
        f"**Model** `{ss[MODEL]}` ({ss[HEAD]} head)  \n"
        f"**Data** {ds.label + f' · {len(ds.used.items)} images' if ds else '— (pick on Data)'}  \n"
        f"**Strategy** {ss[STRATEGY]}  \n"
        f"**Run** {job_label(ss.get(JOB))}"
    )


def job_label(job) -> str:
    if job is None:
        return "—"
    if job.running:
        return f"training, epoch {job.epoch}/{job.total_epochs}"
    if job.result and job.result.run_dir:
        return f"{job.status}: `{job.result.run_dir.name}`"
    return job.status


@st.cache_resource
def clean_work_dirs() -> bool:
    """Once per app start: remove the scratch folders (uploads, extracted zips) that old sessions left."""
    import shutil

    root = paths.work_dir()
    if root.is_dir():
        for child in root.iterdir():
            if child.is_dir() and child.name != "cli":  # the CLI's own folder may be in use
                shutil.rmtree(child, ignore_errors=True)
    return True


