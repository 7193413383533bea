"""`vislab train`: fine-tune a model and save a run folder (or continue one: --resume)."""

from __future__ import annotations

import sys
import threading
import time

from vislab.cli._common import (BN_MODES, ENGINES, HEAD_KINDS, STRATEGIES, CliError, between, lasting_imports,
                                on_ray, out_folder, positive)
from vislab.models import catalog


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="fine-tune a model and save a run folder")
    t.add_argument("--data", required=True, help="folder, .zip, or 'sample' for the bundled textile set")
    t.add_argument("--model", default=catalog.DEFAULT_MODEL)
    t.add_argument("--strategy", choices=STRATEGIES, default="head")
    t.add_argument("--thaw-last", type=positive(int), default=1,
                   help="partial: how many of the last stages train with the head; surgical: the one stage that "
                        "trains, counted from the head (1 = the last)")
    t.add_argument("--bn", choices=BN_MODES, default=None,
                   help="BatchNorm mode of thawed stages (default eval; train for scratch)")
    t.add_argument("--head", choices=HEAD_KINDS, default="linear",
                   help="the new classifier: linear, an MLP, or attention (self-attention over the last feature map)")
    t.add_argument("--weights", choices=("pretrained", "auto"), default="pretrained",
                   help="pretrained: fail if none here; auto: fall back to random init with a note")
    t.add_argument("--epochs", type=positive(int), required=True)
    t.add_argument("--lr", type=positive(float), default=1e-3)
    t.add_argument("--img-size", type=between(int, 16, 1024), default=None, help="input size, 16-1024 px")
    t.add_argument("--batch-size", type=positive(int), default=32)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    t.add_argument("--per-class", type=positive(int), default=None, help="use at most N images per class")
    t.add_argument("--val-frac", type=between(float, 0.05, 0.9), default=0.2,
                   help="share of each class held out for validation (ignored for a train/ val/ layout)")
    t.add_argument("--train-fraction", type=between(float, 0.01, 1.0), default=1.0,
                   help="train on this share of each class's training images (nested: a smaller share lies "
                        "inside a larger one for the same --seed); the validation images stay the same")
    t.add_argument("--augment", action="store_true", help="random crops and flips while training")
    t.add_argument("--aug-views", type=positive(int, zero_ok=True), default=0, metavar="K",
                   help="with --augment: K fixed random views per image, cached with the frozen prefix "
                        "(default 0: new views every epoch, the full loop)")
    t.add_argument("--workers", type=between(int, -1, 64), default=-1,
                   help="DataLoader worker processes (default: 0 on the CPU, cores - 1 with a GPU)")
    t.add_argument("--layer-decay", type=positive(float), default=None,
                   help="per-stage learning rates: lr at the head, x this per stage toward the stem (e.g. 0.7)")
    t.add_argument("--no-cache", action="store_true",
                   help="run the frozen prefix every epoch (default: once per image, when it is deterministic)")
    t.add_argument("--engine", choices=ENGINES, default="auto",
                   help="what runs the cached frozen prefix: auto (the faster that gives the same numbers), "
                        "torch, or onnxruntime (falls back to torch, saying why, if it cannot run the prefix)")
    t.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="train as a task on the Ray cluster at ADDRESS (HOST:PORT of `ray start --head`, or "
                        "'local'); needs the ray extra, and --out on a path every node mounts")
    t.add_argument("--out", required=True, help="run folder to write")
    t.add_argument("--resume", default=None, metavar="RUN",
                   help="continue this run folder's model and plan for --epochs more (model options ignored)")


class Progress:
    """A one-line progress bar on stderr, and a line per epoch on stdout."""

    def __init__(self):
        self.start = time.perf_counter()
        self.bar = sys.stderr.isatty()  # no carriage-return bar in logs and pipes

    def __call__(self, e):
        if e.kind == "batch" and self.bar:
            width = 24
            done = int(width * e.batch / max(e.batches, 1))
            sys.stderr.write(f"\r  epoch {e.epoch}/{e.epochs} [{'#' * done}{'.' * (width - done)}] "
                             f"{e.batch}/{e.batches} loss {e.loss:.3f}")
            sys.stderr.flush()
        elif e.kind == "epoch":
            m = e.metrics
            if self.bar:
                sys.stderr.write("\r" + " " * 72 + "\r")
            print(f"epoch {m['epoch']:>2} [{m['phase']}] train loss {m['train_loss']:.4f} acc {m['train_acc']:.3f}"
                  f" | val loss {m['val_loss']:.4f} acc {m['val_acc']:.3f} | {m['seconds']:.1f} s", flush=True)
        elif e.kind == "phase":
            print(f"phase {e.message}", flush=True)
        elif e.kind == "cache":
            print(e.message, flush=True)
        elif e.kind == "end" and e.message not in ("done", "stopped"):
            print(e.message, file=sys.stderr)


def run(args) -> int:
    if args.aug_views and not args.augment:  # argument errors first: no torch loaded to say them
        raise CliError("--aug-views caches augmented views: add --augment")
    if args.ray and args.resume:
        raise CliError("--ray runs new jobs: resume without --ray")
    with lasting_imports(args):  # torch: loaded when the command runs, not for its --help or argument errors
        from vislab import _paths as paths
        from vislab.data import folders as data
        from vislab.data.transforms import Augment
        from vislab.training import experiment
        from vislab.training.loop import TrainConfig

    out = out_folder(args.out, "model.safetensors", "a run")
    report = data.load_dataset(data.resolve(args.data), paths.work_dir() / "cli")
    if not report.usable:
        raise CliError(f"dataset not usable: {'; '.join(report.errors)}")
    if report.skipped:
        print(f"skipped {len(report.skipped)} unreadable or non-image files (vislab data check lists them)")
    for w in report.warnings[:10]:
        print(f"warning: {w}")
    if len(report.warnings) > 10:
        print(f"… and {len(report.warnings) - 10} more warnings (vislab data check lists them)")
    if args.resume:
        return _resume(args, report, out)
    spec = experiment.Spec(
        model=args.model, strategy=args.strategy, thaw_last=args.thaw_last, bn=args.bn, head=args.head,
        weights="random" if args.strategy == "scratch" else args.weights, img_size=args.img_size,
        per_class=args.per_class, val_frac=args.val_frac, train_fraction=args.train_fraction,
        augment=Augment(hflip=args.augment, crop=args.augment, views=args.aug_views),
        train=TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                          device=args.device, num_workers=args.workers, cache=not args.no_cache,
                          layer_decay=args.layer_decay),
        engine=args.engine,
    )
    if args.ray:
        return _train_on_ray(args, spec, report, out)
    return _train_here(args, spec, report, out)


def _resume(args, report, out) -> int:
    from vislab.training import experiment  # loaded by run() already

    resumed = experiment.prepare_resume(args.resume, report, args.epochs)
    print(f"resuming {args.resume} for {args.epochs} more epochs")
    for note in resumed[1][1].notes:  # where it continues from; that the run was interrupted, if it was
        print(f"note: {note}")
    return _report_result(experiment.resume(args.resume, report, args.epochs, out, Progress(), resumed=resumed))


def _train_on_ray(args, spec, report, out) -> int:
    from vislab.training import runs  # loaded by run() already
    from vislab.training.tasks import TrainTask

    progress = Progress()
    on_ray(args, out, TrainTask(spec, report), lambda e, run: progress(e))
    best = max(runs.read_metrics(out), key=lambda m: m["val_acc"])
    print(f"best val acc {best['val_acc']:.3f} (epoch {best['epoch']}); run saved to {out} (trained on Ray)")
    return 0


def _train_here(args, spec, report, out) -> int:
    from vislab.data import folders as data  # loaded by run() already
    from vislab.models import freezing
    from vislab.training import experiment, runs

    model, info, phases = experiment.prepare(spec, len(report.classes))
    rep = freezing.report(model)
    weights_line = info.weights.describe() if info.weights.available else "random init"
    print(f"model {args.model} ({info.source}), weights: {weights_line}")
    for note in info.notes:
        print(f"note: {note}")
    print(f"strategy {args.strategy}: {rep.trainable_params:,} trainable / {rep.total:,} parameters; "
          f"{len(rep.moving_bn_buffers)} BatchNorm layers update their running stats")
    print(f"input {info.data_config.input_size[1]}x{info.data_config.input_size[2]}, "
          f"{len(report.classes)} classes, {len(data.subset(report, args.per_class, args.seed).items)} images")
    stop = threading.Event()
    try:  # the model prepared above is the one trained (one build), its best epoch kept as it goes
        result = experiment.train(spec, report, out, Progress(), stop, prepared=(model, info, phases),
                                  checkpoints=True)
    except KeyboardInterrupt:
        stop.set()
        if runs.checkpoint_of(out) is not None:  # the best epoch so far: kept, as the checkpoint promises
            if getattr(args, "out_guard", None) is not None:
                args.out_guard.keep = True
            raise CliError(f"interrupted: the best epoch so far is kept in {out}; continue it with "
                           f"`vislab train --resume {out} --data {args.data} --epochs N --out NEW`") from None
        raise CliError("interrupted before the first epoch finished; nothing was saved") from None
    return _report_result(result)


def _report_result(result) -> int:
    h = result.history
    if not h.epochs:
        raise CliError("training stopped before the first epoch finished; nothing was saved")
    best = h.epochs[h.best_epoch - 1]
    per_epoch = sum(m["seconds"] for m in h.epochs) / len(h.epochs)
    print(f"best val acc {best['val_acc']:.3f} (epoch {h.best_epoch}), {per_epoch:.1f} s per epoch; "
          f"run saved to {result.run_dir}")
    return 0
