"""`vislab data check`: validate a class-folder dataset."""

from __future__ import annotations

import sys

from vislab.cli._common import EXIT_BAD_INPUT, Parser


def add_parser(sub) -> None:
    d = sub.add_parser("data", help="check a dataset")
    dsub = d.add_subparsers(dest="action", required=True, parser_class=Parser)
    dc = dsub.add_parser("check", help="validate a class-folder dataset (folder or .zip, or 'sample')")
    dc.add_argument("path")


def run(args) -> int:
    from vislab import _paths as paths  # torch: loaded when the command runs, not for its --help
    from vislab.data import folders as data

    report = data.load_dataset(data.resolve(args.path), paths.work_dir() / "cli")
    print(report.summary())
    if not report.usable:
        print(f"vislab: dataset not usable: {report.errors[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0
