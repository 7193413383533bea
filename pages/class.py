import importlib.util

import streamlit as st

from pages import _route, _runview, _state
from pages._results import pct
from vislab.serving import classroom, instructor, labs

_route.through_app()  # first: a page opened on its own (the first request after a restart) goes through app.py

# ---- this page's keys. None is kept (never _state.kept): the flag and the typed key stay out of the lab ----
INSTRUCTOR = "class_instructor"  # True once this session gave the instructor key; "Lock" forgets it
KEY_FORM = "class_key_form"
KEY_INPUT = "class_key_input"  # the password box (cleared on submit, never kept)
LOCK = "class_lock"
OPEN_RUN = "class_open_run"  # "<lab id>/<run folder>" picked to open read-only (never shown: the id is a private link)
SHOWN_RUN = "class_shown_run"  # the run the page drew outside the live table (a new pick redraws the page)
TABLE = "class_table"

POLL_S = 3.0  # the live table's refresh
NO_NAME = "(no name)"

ss = st.session_state
st.title("Class")

if not instructor.configured():
    st.info("The Class page is off on this server: it shows every lab, so it needs an instructor key. Start the "
            "server with one, for example `VISLAB_INSTRUCTOR_KEY=<a long secret> bash scripts/start.sh`, then "
            "open this page and type that key.")
    st.stop()


def client() -> str:
    """Who is typing, for counting wrong keys: the connection's address; one bucket for local connections."""
    try:
        ip = st.context.ip_address
    except Exception:  # outside a served session (no context): still counted, in one bucket
        ip = None
    return ip if isinstance(ip, str) and ip else "local"


if not ss.get(INSTRUCTOR):
    st.markdown("Type the instructor key to see every lab on this server.")
    with st.form(KEY_FORM, clear_on_submit=True):
        given = st.text_input("Instructor key", type="password", key=KEY_INPUT)
        submitted = st.form_submit_button("Open the class", type="primary")
    if submitted:
        verdict = instructor.check(given, client())
        if verdict:
            ss[INSTRUCTOR] = True
            st.rerun()
        st.error(verdict.message)
    st.stop()


def _name(lab: classroom.LabRow) -> str:
    mine = lab.id == ss.get(_state.LAB)
    return (lab.name or NO_NAME) + (" (this browser)" if mine else "")


def _dataset(lab: classroom.LabRow) -> tuple[str, int | None, int | None]:
    if lab.dataset is None:
        return (lab.dataset_label or "—"), None, None
    return f"{lab.dataset_label or 'dataset'} · {lab.dataset.short}", len(lab.dataset.classes), lab.dataset.images


def _table(rows: list[classroom.LabRow]) -> None:
    data = []
    for lab in rows:
        name, classes, images = _dataset(lab)
        latest, best = lab.latest, lab.best
        data.append({"name": _name(lab), "dataset": name, "classes": classes, "images": images,
                     "model": (latest.model if latest else "") or lab.model, "strategy": (latest.strategy if latest
                                                                                         else "") or lab.strategy,
                     "job": lab.status, "progress": latest.progress if latest and latest.state == "running" else None,
                     "best val acc": None if best is None else round(100 * best.best, 1),
                     "last activity": classroom.ago(lab.activity)})
    st.dataframe(data, hide_index=True, width="stretch", key=TABLE, column_config={
        "progress": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="percent"),
        "best val acc": st.column_config.NumberColumn(format="%.1f%%", help="the lab's best training run"),
        "job": st.column_config.TextColumn(help="the lab's latest job")})


def _boards(rows: list[classroom.LabRow]) -> None:
    boards = classroom.leaderboards(rows)
    if not boards:
        st.caption("Leaderboards appear once a lab has finished an epoch of training.")
        return
    st.subheader("Leaderboards: one per dataset (the same images are the same dataset, whoever uploaded them)")
    for board in boards:
        d = board.dataset
        st.markdown(f"**{labs.name_markdown(board.label)}** · {len(d.classes)} classes · {d.images} images · "
                    f"digest `{d.short}`")
        st.dataframe([{"#": i + 1, "name": _name(lab), "best val acc": round(100 * run.best, 1), "model": run.model,
                       "strategy": run.strategy, "head": run.head} for i, (lab, run) in enumerate(board.entries)],
                     hide_index=True, width="stretch",
                     column_config={"best val acc": st.column_config.NumberColumn(format="%.1f%%")})


def _picker(rows: list[classroom.LabRow]) -> None:
    by_key = {f"{lab.id}/{run.run}": (lab, run) for lab in rows for run in lab.runs if run.openable}
    if not by_key:
        return
    if ss.get(OPEN_RUN) not in by_key and ss.get(OPEN_RUN) is not None:
        ss[OPEN_RUN] = None  # its lab or run is gone
    st.selectbox("Open a run read-only (for the projector)", list(by_key), index=None, key=OPEN_RUN,
                 placeholder="pick a finished run", format_func=lambda k: (
                     f"{_name(by_key[k][0])} · {by_key[k][1].model} · {by_key[k][1].strategy} · "
                     f"{pct(by_key[k][1].best)} · {by_key[k][1].dataset_label or 'dataset'}"))
    if ss.get(OPEN_RUN) != ss.get(SHOWN_RUN):
        st.rerun()  # the run is drawn outside this live part: the whole page draws it once


@st.fragment(run_every=POLL_S)
def live() -> None:
    rows = classroom.overview()
    st.caption(f"{len(rows)} lab{'s' if len(rows) != 1 else ''} on this server, most recently active first; "
               f"refreshed every {POLL_S:.0f} s.")
    _table(rows)
    _boards(rows)
    _picker(rows)


c1, c2 = st.columns([5, 1])
c1.markdown("Every lab on this server (and on every server sharing its lab home), live while the class trains.")
if c2.button("Lock", key=LOCK, help="Forget the key in this browser: the page asks for it again"):
    ss.pop(INSTRUCTOR, None)
    ss.pop(OPEN_RUN, None)
    st.rerun()
picked = ss.get(OPEN_RUN)
ss[SHOWN_RUN] = picked  # before the live part: a pick there that differs reruns the page (once) to draw it
live()
if importlib.util.find_spec("pages._publish") is not None:
    from pages import _publish

    with st.expander("Publish a dataset to the class"):
        _publish.publish_controls()
if picked:
    lab_id, _, run_name = picked.partition("/")
    row = classroom.lab_row(labs.Lab(lab_id).folder) if labs.valid_id(lab_id) else None
    st.divider()
    st.header(f"{labs.name_markdown(row.name or NO_NAME) if row else NO_NAME}: {labs.name_markdown(run_name)}")
    _runview.show(labs.Lab(lab_id).runs_dir / run_name if row else labs.labs_dir() / "missing", "class")
