"""`vislab engines prepare`: export models' head-only frozen prefixes for onnxruntime ahead of any run."""

from __future__ import annotations

from vislab.cli._common import Parser


def add_parser(sub) -> None:
    en = sub.add_parser("engines", help="the frozen prefix's engines (torch, onnxruntime)")
    ensub = en.add_subparsers(dest="action", required=True, parser_class=Parser)
    ep = ensub.add_parser("prepare", help="set-up: export models' head-only prefixes for onnxruntime ahead of "
                                          "any run (default: the catalog convnets with weights here)")
    ep.add_argument("names", nargs="*")


def run(args) -> int:
    from vislab.models import catalog, weights  # torch: loaded when the command runs, not for its --help
    from vislab.training import experiment

    for name in args.names or weights.convnets_with_weights():
        catalog.source_of(name)  # an unknown name: a clear error (main), before any model is built
        print(f"{name}: {experiment.export_prefix(name)}")
    return 0
