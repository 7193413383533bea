"""Where vislab keeps its own files: seeded and imported weights, downloads, runs, work folders.

Everything the lab writes lives under one home folder, `VISLAB_HOME` if set, else `.vislab/` at the root of
the repository (or `~/.vislab` for an install outside a checkout). The torch hub cache of the user is read
too, never written, except by an explicit `vislab weights pull`, which is torch's own download.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    env = os.environ.get("VISLAB_HOME")
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").exists() and (repo / "src" / "vislab").is_dir():
        return repo / ".vislab"
    return Path.home() / ".vislab"


def weights_dir() -> Path:
    """Seeded and imported state dicts (`<model>.safetensors`) and their `manifest.json`."""
    return home() / "weights"


def hub_checkpoints() -> Path:
    """A torch-hub-style `checkpoints/` folder that set-up fills with torchvision's own weight files."""
    return home() / "hub" / "checkpoints"


def downloads_dir() -> Path:
    return home() / "downloads"


def runs_dir() -> Path:
    return home() / "runs"


def work_dir() -> Path:
    """Scratch space for extracted uploads; one sub-folder per session."""
    return home() / "work"


# work_dir()'s sub-folders the app keeps when it starts (it clears the rest): the CLI's, which may be in
# use, and the exported prefixes of the engines (pruned by age in engines.py; set-up fills it ahead)
ENGINE_EXPORTS = "prefix-engines"
KEPT_WORK_DIRS = ("cli", ENGINE_EXPORTS)


def checkpoint_dirs() -> list[Path]:
    """Folders searched for torch-hub checkpoint files, in order: the user's torch hub cache, then ours."""
    import torch

    return [Path(torch.hub.get_dir()) / "checkpoints", hub_checkpoints()]
