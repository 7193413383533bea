"""`vislab compare`: train several strategies on the same split and seed; one table."""

from __future__ import annotations

from pathlib import Path

from vislab.cli._common import (ENGINES, STRATEGIES, CliError, between, lasting_imports, on_ray, out_folder,
                                positive)
from vislab.models import catalog


def add_parser(sub) -> None:
    c = sub.add_parser("compare", help="train several strategies on the same split and seed; one table")
    c.add_argument("--data", required=True, help="folder, .zip, or 'sample'")
    c.add_argument("--model", default=catalog.DEFAULT_MODEL)
    c.add_argument("--strategies", default="head,partial,full,scratch",
                   help="comma-separated: " + ",".join(STRATEGIES))
    c.add_argument("--epochs", type=positive(int), required=True)
    c.add_argument("--lr", type=positive(float), default=1e-3)
    c.add_argument("--img-size", type=between(int, 16, 1024), default=None, help="input size, 16-1024 px")
    c.add_argument("--batch-size", type=positive(int), default=32)
    c.add_argument("--per-class", type=positive(int), default=None)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--engine", choices=ENGINES, default="auto",
                   help="what runs the cached frozen prefixes (see train --engine)")
    c.add_argument("--ray", metavar="ADDRESS", default=None, help="run the comparison as one task on the Ray "
                   "cluster at ADDRESS (see train --ray)")
    c.add_argument("--out", required=True, help="folder for comparison.csv/json and the run folders")


def run(args) -> int:
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:  # an argument error: said before torch loads or --out is made
        raise CliError(f"unknown strategy {', '.join(unknown) or '(none)'}: choose from {', '.join(STRATEGIES)}")
    with lasting_imports(args):  # torch: loaded when the command runs, not for its --help or argument errors
        from vislab import _paths as paths
        from vislab.data import folders as data
        from vislab.training import compare
        from vislab.training.tasks import CompareTask

    out = out_folder(args.out, "comparison.json", "a comparison")
    report = data.load_dataset(data.resolve(args.data), paths.work_dir() / "cli")
    if not report.usable:
        raise CliError(f"dataset not usable: {'; '.join(report.errors)}")
    configs = [compare.Config.preset(s) for s in strategies]
    for c in configs:
        c.lr = args.lr

    def progress(name, e):
        if e.kind == "epoch":
            m = e.metrics
            print(f"{name}: epoch {m['epoch']} val acc {m['val_acc']:.3f} loss {m['val_loss']:.4f}", flush=True)
        elif e.kind == "cache":
            print(f"{name}: {e.message}", flush=True)

    task = CompareTask(args.model, report, configs, args.epochs, img_size=args.img_size,
                       batch_size=args.batch_size, seed=args.seed, per_class=args.per_class, engine=args.engine)
    if args.ray:
        on_ray(args, out, task, lambda e, run: progress(run, e))
        print(compare.markdown(compare.load(out)[2]))
        print(f"wrote {Path(args.out) / 'comparison.csv'} and the run folders under {args.out} (trained on Ray)")
        return 0
    rows = task.run(out, progress)
    print(compare.markdown(rows))
    print(f"wrote {Path(args.out) / 'comparison.csv'} and the run folders under {args.out}")
    return 0
