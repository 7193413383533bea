"""The Study page: how much of the pretrained network to thaw, for how much data, measured on the lab's own
dataset (vislab.training.study). One background job trains the grid; its rows are drawn as they finish."""

from dataclasses import replace
from pathlib import Path

import streamlit as st

from pages import _charts, _dataset, _jobs, _live, _results, _route, _state
from vislab.data import folders as data
from vislab.figures import study_charts
from vislab.serving import jobs
from vislab.training import study, tasks
from vislab.teaching import measured
from vislab.training.tasks import StudyTask

_route.through_app()  # first: a page opened on its own (the first request after a restart) goes through app.py

# ---- this page's keys (kept: a person's settings, see _state.kept) ------------------------------------------
STUDY_DEPTHS_PREFIX = "study_depths_"  # + the model's stage count: the depths offered follow the model
STUDY_FRACTIONS = "study_fractions"
STUDY_SEEDS = "study_seeds"
STUDY_SCRATCH = "study_scratch"
STUDY_LPFT = "study_lpft"
STUDY_LLRD = "study_llrd"
STUDY_SURGICAL = "study_surgical"
STUDY_BN = "study_bn"
STUDY_EPOCHS = "study_epochs"
STUDY_SIZE = "study_size"
STUDY_BATCH = "study_batch"
STUDY_STOP = "study_stop"
STUDY_RESUME = "study_resume"
STUDY_ROW = "study_row"  # the row opened as a run
STUDY_ACTIVE = "_study_active"  # the study the page is following (its end redraws the page)
STUDY_DEPTH_CHART = "study_depth_chart"
STUDY_HEATMAP = "study_heatmap"
STUDY_RUN = "study"  # the opened row's results (pages/_results.show_run's key)

FRACTIONS = (0.1, 0.25, 0.5, 1.0)
BN_MODES = ("train", "eval", "frozen")

_dataset.open_page()
ss = st.session_state
st.title("Transfer study")
st.markdown("The course's question measured on **your** data: how many stages of the pretrained network should "
            "train, for how many training images? One job trains every combination of thaw depth, share of the "
            "training images and seed of the current model, and draws the answer as rows finish.")

ds: _dataset.Dataset | None = ss.get(_state.DATASET)
active = _jobs.active_job("study")  # the lab's study in progress, read from disk
busy = _jobs.active_job()  # any job of this lab (one at a time per lab)
running = busy is not None


@st.cache_data(max_entries=64, show_spinner="Counting the model's stages…")
def stages_of(model_name: str) -> int:
    """How many stages the model has below its head (what a depth counts), from its architecture."""
    return study.body_stages(model_name)


def depth_label(n: int):
    return lambda d: f"{d} (head only)" if d == 0 else f"{d} (all)" if d == n else str(d)


def _controls(n: int) -> study.Plan | None:
    """The grid's settings, each kept; the plan they make, or None (a warning says why)."""
    depths_key = _state.kept(f"{STUDY_DEPTHS_PREFIX}{n}")
    for key, value in ((depths_key, study.default_depths(n)), (STUDY_FRACTIONS, [0.25, 1.0]), (STUDY_SEEDS, 2),
                       (STUDY_SCRATCH, True), (STUDY_LPFT, False), (STUDY_SURGICAL, False), (STUDY_BN, ["eval"]), (STUDY_EPOCHS, 3),
                       (STUDY_SIZE, 224), (STUDY_BATCH, 32)):
        ss.setdefault(key, value)
    c1, c2 = st.columns([3, 2])
    depths = c1.multiselect("Thaw depths: stages trained below the head", list(range(n + 1)), key=depths_key,
                            format_func=depth_label(n), disabled=running,
                            help="Counted from the head, exactly as `--thaw-last` counts them")
    fractions = c2.multiselect("Training images used", list(FRACTIONS), key=_state.kept(STUDY_FRACTIONS),
                               format_func=lambda f: f"{f:.0%}", disabled=running,
                               help="Nested and stratified: the smaller set lies inside the larger one")
    c1, c2, c3, c4 = st.columns(4)
    seeds = c1.number_input("Seeds", 1, 5, key=_state.kept(STUDY_SEEDS), disabled=running,
                            help="Each seed is its own split and initialisation: the spread over seeds is the noise")
    c2.checkbox("finetune (the depth sweep)", True, disabled=True)
    scratch = c3.checkbox("scratch (random init)", key=_state.kept(STUDY_SCRATCH), disabled=running)
    lpft = c4.checkbox("lp-ft (head, then all)", key=_state.kept(STUDY_LPFT), disabled=running)
    llrd = c4.checkbox("llrd (all, lr x 0.75 per stage down)", key=_state.kept(STUDY_LLRD), disabled=running)
    surgical = c2.checkbox("surgical (one stage only)", key=_state.kept(STUDY_SURGICAL), disabled=running,
                           help="The head and a single stage train, the rest stays frozen (Lee et al. 2023): one "
                                "row per depth above 0, that depth's stage alone")
    bn = st.multiselect("BatchNorm of the thawed stages", list(BN_MODES), key=_state.kept(STUDY_BN), disabled=running)
    c1, c2, c3 = st.columns(3)
    epochs = c1.number_input("Epochs per run", 1, 50, key=_state.kept(STUDY_EPOCHS), disabled=running)
    size = c2.select_slider("Image size", [64, 96, 128, 160, 192, 224], key=_state.kept(STUDY_SIZE),
                            disabled=running)
    batch = c3.select_slider("Batch size", [8, 16, 32, 64], key=_state.kept(STUDY_BATCH), disabled=running)
    if not depths or not fractions or not bn:
        st.warning("Choose at least one thaw depth, one share of the images and one BatchNorm mode.")
        return None
    return study.Plan(
        model=ss[_state.MODEL], depths=sorted(depths), fractions=sorted(fractions), bn=_bn_axis(bn),
        seeds=list(range(ds.seed, ds.seed + int(seeds))), epochs=int(epochs), img_size=int(size),
        batch_size=int(batch), per_class=ds.per_class, val_frac=ds.val_frac,
        strategies=["finetune"] + (["surgical"] if surgical else []) + (["lp-ft"] if lpft else []) + (["llrd"] if llrd else [])
        + (["scratch"] if scratch else []))


def _bn_axis(modes: list[str]) -> list[str | None]:
    """eval alone is the default of `vislab train` (no --bn in the commands); more modes make an axis."""
    return [None] if list(modes) == ["eval"] else [m for m in BN_MODES if m in modes]


def data_label(ds: _dataset.Dataset) -> str:
    """What the rows' commands pass as --data: `sample` for the bundled sample, else the dataset's folder."""
    if ds.source == "sample" and Path(ds.report.root) == data.sample_root():
        return "sample"
    return str(ds.report.root)


def start(plan: study.Plan, n_stages: int) -> None:
    try:
        plan.check(n_stages)
        _jobs.submit(StudyTask(plan, ds.report, data_label(ds)), f"study-{plan.model}")
        st.rerun()
    except (jobs.JobError, ValueError) as exc:  # the lab already has a job (a second tab), or a bad plan
        st.warning(str(exc))


if ds is None or not ds.used.usable:
    st.info("Choose a dataset on the **Data** page first (the bundled sample works offline).")
else:
    try:
        n_stages = stages_of(ss[_state.MODEL])
    except (ValueError, KeyError, RuntimeError) as exc:
        n_stages = None
        st.error(f"Cannot read the stages of `{ss[_state.MODEL]}`: {exc}")
    plan = _controls(n_stages) if n_stages is not None else None
    if plan is not None:
        total = len(plan.points(n_stages))
        st.caption(f"**{total} runs** of `{plan.model}` ({n_stages} stages below its head) on {ds.markdown} "
                   f"({len(ds.used.items)} images), {plan.epochs} epoch(s) each, trained in one job: a frozen "
                   "part shared by several runs is run over the images once.")
    b1, b2, _ = st.columns([1, 1, 4])
    if b1.button("Start the study", type="primary", disabled=running or plan is None):
        start(plan, n_stages)
    if b2.button("Stop", disabled=active is None, key=STUDY_STOP,
                 help="The rows that finished are kept; Resume trains the rest"):
        _jobs.stop(active)
        st.toast("Stopping: the finished rows are kept.")
    if busy is not None and active is None:
        st.caption("This lab's training job is running: a study can start when it ends.")


# ---- reading a study back: study.json, cached on its version (a poll while nothing finished reads nothing) ---

@st.cache_data(max_entries=64, show_spinner=False)
def _folder_of(job_folder: str, stamp: int) -> str:
    """Where a study job's rows live (its own folder, or the study a Resume continues), read once per job.json."""
    return jobs.Job(Path(job_folder)).payload().get("folder") or job_folder


def study_folder(job: jobs.Job) -> Path | None:
    """The folder of a study job of this lab, None for one outside it."""
    try:
        folder = Path(_folder_of(str(job.folder), (job.folder / "job.json").stat().st_mtime_ns))
    except OSError:
        return None
    return folder if _state.current_lab().inside(folder) else None


@st.cache_data(max_entries=32, show_spinner=False)
def _saved(path: str, mtime_ns: int) -> study.Study | None:
    return study.load(path)


def saved_study(folder: Path | None) -> study.Study | None:
    try:
        return _saved(str(folder), (folder / "study.json").stat().st_mtime_ns) if folder else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


@st.cache_data(max_entries=32, show_spinner=False)
def pictures(path: str, mtime_ns: int):
    """(accuracy-by-depth figure, heatmap or None, verdicts, table) of a saved study, once per version."""
    s = _saved(path, mtime_ns)
    lines, refs = study.figure_data(s.rows)
    title = f"{s.plan.model}: what to thaw, for how much data ({len(s.plan.seeds)} seed(s), mean ± spread)"
    depth = study_charts.accuracy_by_depth(lines, refs, title, {0: "0 (head only)", s.n_stages: f"{s.n_stages} (all)"})
    heat = None
    if (grid := study.heatmap_data(s)) is not None:
        bn = f", BatchNorm {s.plan.bn[0]}" if s.plan.bn[0] else ""
        heat = study_charts.depth_fraction_heatmap(*grid, f"Mean best validation accuracy{bn}")
    return depth, heat, study.verdicts(s.rows), table(s.rows)


def table(rows: list[study.Row]) -> list[dict]:
    return [{"name": r.point.name, "strategy": r.point.strategy, "depth": r.point.depth,
             "fraction": f"{r.point.fraction:.0%}", "seed": r.point.seed, "bn": r.point.bn or "eval (default)",
             "best val acc": round(100 * r.best_val_acc, 1), "final val loss": round(r.final_val_loss, 4),
             "train s": r.train_s, "trainable params": r.trainable_params, "command": r.command} for r in rows]


@st.cache_data(max_entries=8, show_spinner="Measuring how ImageNet-like these images look to the model ...")
def _similarity(model: str, root: str, images: int, img_size: int | None, _report) -> measured.Similarity:
    return measured.similarity(model, _report, img_size=img_size)


def _advisor_section(s: study.Study, report) -> None:
    """Where the course's matrix puts this dataset (its size, and its similarity to ImageNet as measured by the
    pretrained head's confidence) beside what the study measured."""
    if report is None or not s.rows:
        return
    st.subheader("The advisor against the measurement")
    sim = _similarity(s.plan.model, report.root, len(report.items), None, report)  # the head at its own size
    st.markdown(f"Similarity to ImageNet: {sim.describe()}.")
    for line in measured.matrix_against_study(len(report.items), sim, s.rows):
        st.markdown(f"- {line}")
    st.caption(measured.LIMITS)


def results(folder: Path | None) -> study.Study | None:
    """The finished rows of the study in `folder`: the advisor's section, the two figures, verdicts, table."""
    s = saved_study(folder)
    if s is None or not s.rows:
        st.caption("No row has finished yet: the figures appear when the first one ends.")
        return s
    _advisor_section(s, ds.used if ds is not None else None)
    depth, heat, verdicts, rows = pictures(str(folder), (folder / "study.json").stat().st_mtime_ns)
    _charts.chart(depth, key=STUDY_DEPTH_CHART)
    if heat is not None:
        _charts.chart(heat, key=STUDY_HEATMAP)
    for line in verdicts:
        st.markdown(f"- {line}")
    st.caption("Error bars: the spread (standard deviation) over seeds. Two settings are *within noise* when "
               "their means differ by less than twice their combined standard error: the study does not crown "
               "either. Every row is the run its command makes with `vislab train`.")
    st.dataframe(rows, hide_index=True, width="stretch", column_config={
        "best val acc": st.column_config.NumberColumn(format="%.1f%%"),
        "command": st.column_config.TextColumn(width="large")})
    return s


def progress(job: jobs.Job | None) -> None:
    """Which row of the lab's study is training, and the rows finished so far (see _live.follow_job)."""
    if job is None or not _live.runs_progress(job, "row", ". It starts by itself; Stop takes it out of the queue."):
        return
    if job.stop_requested:
        st.caption("Stopping after this batch: the rows that finished are kept…")
    results(study_folder(job))


_live.follow_job("study", progress, mark=STUDY_ACTIVE)


def ended(job: jobs.Job, s: study.Study | None) -> None:
    """How the lab's last study ended, and Resume when rows are missing."""
    status = job.status()
    state = status.get("state")
    done = len(s.rows) if s is not None else 0
    total = len(s.plan.points(s.n_stages)) if s is not None else 0
    message = f" {status['message']}" if status.get("message") else ""
    if state == "error":
        st.error(f"The study failed after {done} row(s):{message}")
    elif state == "cancelled":
        st.info(f"The last study was cancelled before it started.{message}")
    elif s is not None and not s.missing():
        st.success(f"Done: {done} rows of `{s.plan.model}` in `{job.id}`.")
    elif state in ("stopped", "interrupted", "done"):  # the worker's message says the same of a stopped study
        st.warning(f"{state.capitalize()} with {done} of {total} rows finished (they are kept)."
                   + (message if state != "stopped" else " Resume trains the rest."))
    if s is None or not s.missing() or state in jobs.ACTIVE:
        return
    if st.button(f"Resume: train the missing rows ({len(s.missing())})", key=STUDY_RESUME, disabled=running):
        try:
            task = tasks.from_payload(StudyTask.kind, job.payload())
            _jobs.submit(replace(task, folder=str(study_folder(job))), f"study-{s.plan.model}-resumed")
            st.rerun()
        except (jobs.JobError, ValueError, KeyError) as exc:
            st.warning(str(exc))


def open_row(s: study.Study) -> None:
    """Any finished row, opened as the run it is: curves, confusion matrix, per-class accuracy."""
    names = [r.point.name for r in s.rows]
    if ss.get(STUDY_ROW) not in names:
        ss[STUDY_ROW] = None
    pick = st.selectbox("Open a row as a run", names, index=None, placeholder="pick a row",
                        key=_state.kept(STUDY_ROW))
    row = next((r for r in s.rows if r.point.name == pick), None)
    if row is None or not row.run_dir:
        return
    st.code(row.command, language="bash")
    try:
        model, run = _jobs.load_run(Path(row.run_dir))
    except (FileNotFoundError, RuntimeError, ValueError, KeyError, OSError) as exc:
        st.error(f"Cannot open {pick}: {exc}")
        return
    _results.show_run(Path(row.run_dir), model, run, run.metrics, STUDY_RUN)


st.divider()
latest = next(iter(_jobs.lab_jobs("study")), None)  # the lab's last study (a reload, another tab show it too)
if latest is not None and active is None:
    folder = study_folder(latest)
    resumed = folder is not None and folder != latest.folder  # a Resume writes into the old study's folder
    st.subheader(f"The last study: `{folder.name}` (resumed by `{latest.id}`)" if resumed
                 else f"The last study: `{latest.id}`")
    shown = saved_study(folder)
    ended(latest, shown)
    shown = results(folder) if shown is not None else None
    if shown is not None and shown.rows:
        st.download_button("Download the table (CSV)", study.csv_text(shown.rows), "study.csv", "text/csv")
        open_row(shown)
elif latest is None:
    st.caption("No study in this lab yet.")
