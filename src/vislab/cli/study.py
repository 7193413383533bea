"""`vislab study`: thaw depth x training fraction x seeds on one dataset, trained in one process (or its seeds
side by side on a Ray cluster: --ray); a table and two figures."""

from __future__ import annotations

import threading

from vislab.cli._common import ENGINES, CliError, between, lasting_imports, on_ray, out_folder, positive
from vislab.models import catalog

STUDY_STRATEGIES = ("finetune", "surgical", "lp-ft", "llrd", "scratch")
BN_CHOICES = ("train", "eval", "frozen")


def _ints(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise CliError(f"--depths takes whole numbers separated by commas, not '{text}'") from None
    if not values or min(values) < 0:
        raise CliError(f"--depths takes stage counts of 0 or more, not '{text}'")
    return values


def _fractions(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise CliError(f"--fractions takes numbers separated by commas, not '{text}'") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise CliError(f"--fractions lie in (0, 1], not '{text}'")
    return values


def _choices(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    values = [t.strip() for t in text.split(",") if t.strip()]
    if not values or any(v not in allowed for v in values):
        raise CliError(f"{flag}: choose from {', '.join(allowed)}, not '{text}'")
    return values


def add_parser(sub) -> None:
    s = sub.add_parser("study", help="how much to thaw for how much data: a grid of runs in one process")
    s.add_argument("--data", required=True, help="folder, .zip, or 'sample'")
    s.add_argument("--model", default=catalog.DEFAULT_MODEL)
    s.add_argument("--depths", default=None, help="stages thawed below the head, e.g. 0,1,2,3 (0 = head only; "
                   "default: a few spread over the network, up to all of it)")
    s.add_argument("--fractions", default="1", help="shares of the training images, e.g. 0.25,0.5,1 (nested)")
    s.add_argument("--seeds", type=positive(int), default=2, help="seeds 0 .. N-1 (each its own split)")
    s.add_argument("--bn", default=None, help="BatchNorm mode(s) of the thawed stages: train, eval, frozen "
                   "(comma-separated for a BatchNorm axis; default eval)")
    s.add_argument("--strategies", default="finetune,scratch",
                   help="finetune (the depth sweep), surgical (the head and only the depth-th stage from it), lp-ft (head, then everything at lr x 0.1), llrd (everything, "
                        "lr x 0.75 per stage below the head), scratch (random init: the reference line)")
    s.add_argument("--epochs", type=positive(int), required=True)
    s.add_argument("--lr", type=positive(float), default=1e-3)
    s.add_argument("--img-size", type=between(int, 16, 1024), default=None, help="input size, 16-1024 px")
    s.add_argument("--batch-size", type=positive(int), default=32)
    s.add_argument("--per-class", type=positive(int), default=None)
    s.add_argument("--engine", choices=ENGINES, default="auto")
    s.add_argument("--ray", metavar="ADDRESS", default=None, help="train on the Ray cluster at ADDRESS (or "
                   "'local'): one task per seed, side by side (see train --ray)")
    s.add_argument("--out", required=True, help="folder for study.csv/json, the figures and the run folders "
                   "(a folder holding this study's finished rows: only the missing rows are trained)")


def _plan(args, study):
    return study.Plan(
        model=args.model, depths=_ints(args.depths) if args.depths else None, fractions=_fractions(args.fractions),
        seeds=list(range(args.seeds)),
        bn=_choices(args.bn, BN_CHOICES, "--bn") if args.bn else [None],
        strategies=_choices(args.strategies, STUDY_STRATEGIES, "--strategies"), epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, img_size=args.img_size, engine=args.engine, per_class=args.per_class)


def _on_ray(args, plan, report, out, progress):
    """The study as one job on the cluster (its seeds side by side); the job's files under OUT/jobs/."""
    import time

    from vislab.training import study
    from vislab.training.tasks import StudyTask

    out.mkdir(parents=True, exist_ok=True)
    args.out_guard.keep = True  # rows land here as they finish, from the cluster
    task = StudyTask(plan, report, args.data, folder=str(out.resolve()))
    on_ray(args, out / "jobs" / time.strftime("%Y%m%d-%H%M%S"), task, lambda e, run: progress(run, e))
    return study.load(out)


def run(args) -> int:
    if args.depths:  # argument errors: said before torch loads or --out is made
        _ints(args.depths)
    _fractions(args.fractions)
    _choices(args.strategies, STUDY_STRATEGIES, "--strategies")
    if args.bn:
        _choices(args.bn, BN_CHOICES, "--bn")
    out = out_folder(args.out)
    if out.exists() and any(out.iterdir()) and not (out / "study.json").is_file():
        raise CliError(f"--out {args.out} holds other files: choose a new folder (nothing was overwritten)")
    with lasting_imports(args):  # torch: loaded when the command runs, not for its --help or argument errors
        from vislab import _paths as paths
        from vislab.data import folders as data
        from vislab.teaching import measured
        from vislab.training import study

    plan = _plan(args, study)
    n_stages = study.body_stages(plan.model)
    plan.check(n_stages)  # a depth past the model's stages: refused before any data is read or written
    report = data.load_dataset(data.resolve(args.data), paths.work_dir() / "cli")
    if not report.usable:
        raise CliError(f"dataset not usable: {'; '.join(report.errors)}")
    total = len(plan.points(n_stages))

    def progress(name, e):
        if e.kind == "epoch":
            print(f"{name}: epoch {e.metrics['epoch']} val acc {e.metrics['val_acc']:.3f}", flush=True)

    def on_row(s):
        args.out_guard.keep = True  # finished rows are kept even if a later one fails or is interrupted
        print(f"[{len(s.rows)}/{total}] {s.rows[-1].point.name}: best val acc {s.rows[-1].best_val_acc:.3f} "
              f"in {s.rows[-1].train_s:.1f} s", flush=True)

    stop = threading.Event()
    try:
        if args.ray:
            result = _on_ray(args, plan, report, out, progress)
        else:
            result = study.run(plan, report, out, data_arg=args.data, on_event=progress, stop=stop, on_row=on_row)
    except KeyboardInterrupt:
        stop.set()
        raise CliError(f"interrupted: the finished rows are kept in {out}; run the same command again to "
                       "train only the rest") from None
    figures = study.write_figures(result, out)
    sim = measured.similarity(plan.model, report)  # the ImageNet head at the size it was trained at
    print(f"similarity to ImageNet: {sim.describe()}".replace("**", ""))
    for line in measured.matrix_against_study(len(data.subset(report, plan.per_class).items), sim, result.rows):
        print(line)
    print(f"wrote {out / 'study.csv'}, {out / 'study.json'}"
          + "".join(f", {f}" for f in figures) + f" and {len(result.rows)} run folders under {out / 'runs'}")
    return 0
