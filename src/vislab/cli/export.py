"""`vislab export`: a run or a model as TorchScript, ONNX or pt2, the file checked against PyTorch."""

from __future__ import annotations

import sys
from pathlib import Path

from vislab.cli._common import CliError, add_model_source, between


def add_parser(sub) -> None:
    e = sub.add_parser("export", help="export a run or a model to TorchScript, ONNX or pt2, and check the file")
    add_model_source(e)
    e.add_argument("--format", choices=("torchscript", "onnx", "pt2"), required=True)
    e.add_argument("--out", required=True, help="file to write (.pt, .onnx, .pt2)")
    e.add_argument("--img-size", type=between(int, 16, 1024), default=None,
                   help="input size, 16-1024 px (default: the model's)")


def run(args) -> int:
    # torch: loaded when the command runs, not for its --help
    from vislab.cli._source import open_model
    from vislab.export import formats as export
    from vislab.models import factory

    if Path(args.out).is_dir():
        raise CliError(f"--out {args.out} is a folder: give a file name, e.g. "
                       f"{Path(args.out) / 'model'}{export.SUFFIX[args.format]}")
    loaded, info = open_model(args)
    if info is not None:
        weights_line = info.weights.describe() if info.weights.available else "random init"
        print(f"model {loaded.name} ({info.source}), weights: {weights_line}")
        for note in info.notes:
            print(f"note: {note}")
    size = loaded.data_config.with_size(args.img_size).input_size
    if args.img_size:  # a ViT resamples its position embeddings; a fixed-size model says it cannot
        factory.fit_input_size(loaded.model, loaded.name, size[-1])
    meta = export.metadata(loaded.name, loaded.classes, loaded.data_config.with_size(args.img_size))
    result = export.export_model(loaded.model, size, args.out, args.format, meta=meta)
    if not result.ok:  # the reason names the warning that explains it, if any
        raise CliError(result.reason)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if Path(args.out).suffix.lower() != export.SUFFIX[args.format]:
        print(f"warning: {args.format} written to a '{Path(args.out).suffix}' file; Netron and other tools go by "
              f"the extension ({export.SUFFIX[args.format]})", file=sys.stderr)
    diff = (f"max abs diff {result.max_abs_diff:.3g} vs PyTorch over {result.checked} (tolerance {result.tol:g})"
            if result.verified else f"not verified: {result.reason}")
    print(f"exported {loaded.name} as {args.format} at {size[1]}x{size[2]} in {result.seconds:.1f} s: {diff}")
    print(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB)")
    return 0
