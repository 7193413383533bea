"""What the commands share: the one-line error, the parser class and argument types, the --out checks, the
--run/--model arguments, a run on Ray, and the collector settings around a command's heavy imports.

It imports no torch: every command module imports it, and the parser is built from all of them."""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
from pathlib import Path

EXIT_BAD_INPUT = 2

# The choices of vislab.models.freezing and vislab.models.heads, spelled out here: those modules import torch, and
# building the parser (help, argument errors) must not (tests/test_cli_paths.py checks that the spellings agree).
STRATEGIES = ("head", "partial", "surgical", "full", "two-phase", "scratch")
BN_MODES = ("train", "eval", "frozen")
HEAD_KINDS = ("linear", "mlp", "attention")
WEIGHT_CHOICES = ("auto", "pretrained", "random")  # models.factory.WEIGHT_CHOICES
ENGINES = ("auto", "torch", "onnxruntime")


class CliError(Exception):
    """Bad input for a command: one line on stderr, exit status 2, nothing left at --out."""


class Parser(argparse.ArgumentParser):
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


def between(kind, low, high):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if not low <= value <= high:  # False for nan too
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {text}")
        return value
    return parse


def positive(kind, zero_ok: bool = False):
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


def add_model_source(p: argparse.ArgumentParser) -> None:
    """`--run DIR | --model NAME` and `--weights`: the model a command works on (export, explain); the
    command opens it with `_source.open_model`."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run folder written by `vislab train`")
    src.add_argument("--model", help="torchvision or timm model name (its original head)")
    p.add_argument("--weights", choices=WEIGHT_CHOICES, default="auto",
                   help="--model: pretrained weights if here (auto), required (pretrained), or random init")


def out_folder(out: str, holds: str | None = None, what: str = "") -> Path:
    """A folder to write results into: refused, before any work, if it is a file or already holds `holds`."""
    if not str(out).strip():
        raise CliError("--out needs a folder name")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise CliError(f"--out {out} is a file, not a folder")
    if holds is None:
        return folder
    if (folder / holds).exists():
        raise CliError(f"--out {out} already holds {what}: choose a new folder (nothing was overwritten)")
    try:  # a folder that cannot be written fails now, not after training
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--out {out} cannot be created ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK):
        raise CliError(f"--out {out} is not writable")
    return folder


# A command's own process (main() reading sys.argv) ends when the command does. Its heavy imports (torch,
# torchvision and the torch._dynamo + sympy that torchvision.ops and torch.optim pull in: ~350,000 objects)
# live as long as the process; the cyclic collector walking them again and again finds nothing to free:
# 6 full passes while they are imported, and 4-6 more while the interpreter exits (0.5 s at exit alone).
@contextlib.contextmanager
def lasting_imports(args):
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


def on_ray(args, out: Path, task, on_event) -> dict:
    """Run `task` (a training.tasks TrainTask or CompareTask) as one job on the Ray cluster of --ray, relaying its events; its final status."""
    try:  # ray is an optional dependency (the ray extra): imported only when --ray asks for it
        from vislab.serving import rayqueue
    except ImportError:
        raise CliError("--ray needs ray: pip install -e '.[ray]'") from None
    from vislab.serving import jobs  # torch: loaded once the command runs, never for its help

    try:
        status = rayqueue.run_job(out, task, device=getattr(args, "device", "cpu"), addr=args.ray,
                                  on_event=on_event)
    except jobs.JobError as exc:
        raise CliError(str(exc)) from None
    if status["state"] != "done":
        raise CliError(f"the job on Ray ended {status['state']}: {status.get('message') or 'see the run folder'}")
    return status
