"""The `vislab` command: models, weights, engines, data check, train, compare, study, export, explain.

One module per command (`vislab.cli.train`, ...), each with `add_parser` (its own subparser) and `run(args)`;
this module assembles the parser and dispatches. Errors are one line and exit status 2; a command that fails
leaves nothing at its --out (OutGuard). Building the parser imports no torch, so help and argument errors
answer at once: a command module imports only light modules at its top, and loads torch and the library when
its `run` is called (tests/test_cli_paths.py checks that `--help` and argument errors load no torch)."""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import sys

from vislab._fileio import OutGuard
from vislab.cli import compare, data, engines, explain, export, models, study, train, weights
from vislab.cli._common import EXIT_BAD_INPUT, CliError, Parser

COMMANDS = {"models": models, "weights": weights, "engines": engines, "data": data, "train": train,
            "compare": compare, "study": study, "export": export, "explain": explain}  # in the order --help lists them


def _collect_then_freeze() -> None:
    """At exit (atexit, registered before any heavy import, so it runs after their own handlers): one
    collection of what is garbage now, so its finalizers run as the interpreter's own first pass would have run
    them; then everything still alive is frozen, so the passes of module teardown do not walk it again. Files
    are written and closed by then, and the interpreter still flushes stdout/stderr itself."""
    gc.collect()
    gc.freeze()


def build_parser() -> argparse.ArgumentParser:
    """The parser: each command adds its own subparser. It imports nothing heavy (no torch)."""
    p = Parser(prog="vislab", description="vislab: the transfer-learning visual lab")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS.values():
        command.add_parser(sub)
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
    try:
        return COMMANDS[args.command].run(args)
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
