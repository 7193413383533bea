"""`vislab explain`: the look-inside pages' maps for a list of images, as files (workshop preparation).

    vislab explain --run DIR | --model NAME --view VIEW --images FILE... --out DIR [--scores] [--sanity]

writes, for each image, `<stem>_<view>.png` (the overlay, as the page draws it) and `<stem>_<view>.npy` (the
map; `vislab.views.explain` says what each view holds); `--scores` adds scores.csv (views.faithfulness), and
`--sanity` adds sanity.csv and one strip PNG per image (views.sanity: the map as the model's stages are
randomised, head first, on a copy). Everything is decided and computed before the first
file is written: a missing image, a run folder that is not one, or a view that does not apply to the model
(attention on a CNN) is one line on stderr, exit status 2, and nothing written (main's OutGuard removes what a
failed write made). Files are written atomically (`vislab._fileio`).
"""

from __future__ import annotations

from pathlib import Path

from vislab import _fileio as fileio
from vislab.cli._common import CliError, add_model_source, out_folder

# vislab.views.explain.VIEWS, spelled here: that module imports torch, and building the parser must not
# (tests/test_cli_paths.py checks that the two spellings agree)
VIEWS = ("cam", "gradcam", "gradcampp", "layercam", "attention", "rollout", "se", "features")
CAM_VIEWS = VIEWS[:4]  # the class activation maps: what --sanity checks (vislab.views.explain.CAM_VIEWS)


def add_parser(sub) -> None:
    p = sub.add_parser("explain", help="write the look-inside pages' maps (CAM, attention, SE, features) "
                                       "for images, as PNG overlays and .npy arrays")
    add_model_source(p)
    p.add_argument("--view", choices=VIEWS, required=True)
    p.add_argument("--images", nargs="+", required=True, metavar="FILE")
    p.add_argument("--out", required=True, help="folder for <stem>_<view>.png and .npy")
    p.add_argument("--layer", default=None, help="CAM target layer or feature-map layer (default: the page's)")
    p.add_argument("--scores", action="store_true", help="also write scores.csv: deletion and insertion AUC of each "
                   "map for the predicted class, beside a random map's and a centred blob's")
    p.add_argument("--sanity", action="store_true", help="also write sanity.csv and <stem>_<view>_sanity.png: "
                   "the map after randomising the model's stages head first (on a copy), with its rank "
                   "correlation and SSIM to the original (CAM views only)")


def run(args) -> int:
    """0 when every file was written; a bad argument or a failed write raises CliError (exit 2)."""
    # torch: loaded when the command runs, not for its --help
    from vislab.cli._source import open_model
    from vislab.views import explain

    if args.sanity and args.view not in CAM_VIEWS:  # before the model loads: the library says the same
        raise CliError(f"--sanity checks a class activation map; --view {args.view} is not one "
                       f"(choose {', '.join(CAM_VIEWS)})")
    images = read_images(args.images)
    folder = out_folder(args.out)
    loaded, _ = open_model(args)
    outputs = explain.compute(loaded, args.view, images, args.layer)
    rows = explain.scores(loaded, args.view, images, outputs) if args.scores else None  # before any file
    checked = explain.sanity(loaded, args.view, images, args.layer) if args.sanity else None
    try:
        written = explain.write(outputs, args.view, folder)
        if rows is not None:
            written.append(fileio.write_bytes(folder / "scores.csv", explain.scores_csv(rows).encode()))
        if checked is not None:
            written.append(fileio.write_bytes(folder / "sanity.csv", explain.sanity_csv(checked[0]).encode()))
            written += [fileio.write_bytes(folder / name, png) for name, png in checked[1].items()]
    except OSError as exc:
        raise CliError(f"--out {args.out} cannot be written ({exc.strerror or exc})") from None
    for path in written:
        print(path)
    return 0


def read_images(files: list[str]) -> list[tuple[str, object]]:
    """(stem, upright RGB PIL image) for each file; a missing or unreadable file, or two with one stem, is
    refused."""
    from vislab.data.transforms import load_image  # torch: loaded when the command runs (see run)

    out, stems = [], set()
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise CliError(f"--images {f}: no such file")
        try:
            img = load_image(path)
        except (OSError, ValueError) as exc:
            raise CliError(f"--images {f}: not a readable image ({exc})") from None
        if path.stem in stems:
            raise CliError(f"--images: two files are named {path.stem}.*; their outputs would overwrite each other")
        stems.add(path.stem)
        out.append((path.stem, img))
    return out
