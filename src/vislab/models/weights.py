"""Pretrained weights, offline first.

Sources, in the order they are tried:
  imported  a file the user gave with `vislab weights import` (kept in the lab home's `weights/`),
  hub       the real download caches: torch hub `checkpoints/` (torchvision, timm URL weights) and the
            Hugging Face cache (timm `hf_hub_id` weights), exactly where torchvision and timm put them,
            then the `hub/checkpoints/` folders that seeding fills,
  seeded    files that set-up took from registry packages (see `seeding.py`),
  download  only when asked (`vislab weights pull`): torchvision's and timm's own download code.
Weights are the machine's, not one lab home's: "imported" and "seeded" are looked up in every weights folder of
`paths.weights_homes()` (the lab home, `VISLAB_WEIGHTS`, then the checkout's `.vislab/`), so a server on
another `VISLAB_HOME` finds what set-up seeded. When none is found, `missing_advice` says what to run.
Files are read with `weights_only=True` or as safetensors; a pickle that carries code is refused.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from vislab.models import catalog
from vislab import _fileio as fileio, _paths as paths
from vislab.models.build import build_architecture
from vislab.models.heads import head_name


class WeightsError(ValueError):
    """Weights are missing, unreadable or do not fit the architecture. The message says what to do."""


@dataclass
class WeightsStatus:
    model: str
    source: str | None  # "imported" | "hub" | "seeded" | None (no real weights here)
    path: Path | None
    note: str = ""  # e.g. what the head was trained on

    @property
    def available(self) -> bool:
        return self.path is not None

    def describe(self) -> str:
        if not self.available:
            return "no pretrained weights on this machine (random init only; `vislab weights pull` when online)"
        text = f"{self.source}: {self.path}"
        return f"{text} ({self.note})" if self.note else text


# -- the manifest of seeded and imported files ------------------------------------------------------------

def _manifest_path() -> Path:
    """The lab home's own manifest: the one imports write."""
    return paths.lab_weights_dir() / "manifest.json"


def _read_json(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def manifests() -> list[tuple[Path, dict]]:
    """(weights folder, its manifest) for each weights folder of `paths.weights_homes()`, in search order."""
    return [(home / "weights", _read_json(home / "weights" / "manifest.json")) for home in paths.weights_homes()]


def _records(name: str) -> list[dict]:
    """`name`'s manifest records, in search order (the lab home's first)."""
    return [m[name] for _, m in manifests() if isinstance(m.get(name), dict)]


def _has_file(record: dict) -> bool:
    return bool(record.get("file")) and Path(record["file"]).is_file()


def _imported(record: dict) -> bool:
    return record.get("source") == "imported" and _has_file(record)


def _seeded(record: dict) -> bool:
    return record.get("source") != "imported" and record.get("ok", True) and _has_file(record)


def read_manifest() -> dict:
    """Model name -> the manifest record `status` goes by, over every weights folder: the first imported file
    that exists, else the first usable seeded one, else the lab home's (or the first) record."""
    merged: dict = {}
    for pick in (_imported, _seeded, lambda r: True):
        for _, manifest in manifests():
            for name, record in manifest.items():
                if name not in merged and isinstance(record, dict) and pick(record):
                    merged[name] = record
    return merged


def _write_manifest(manifest: dict) -> None:
    fileio.write_bytes(_manifest_path(), json.dumps(manifest, indent=2, sort_keys=True).encode())


# -- where the real loaders look ---------------------------------------------------------------------------

def torchvision_weights(name: str) -> list:
    """The model's weight enums, DEFAULT first."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    return [enum.DEFAULT] + [w for w in enum if w != enum.DEFAULT]


def _find_checkpoint(url: str) -> Path | None:
    filename = url.rsplit("/", 1)[-1]
    for folder in paths.checkpoint_dirs():
        if (folder / filename).is_file():
            return folder / filename
    return None


def _timm_cached(name: str) -> Path | None:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(hit, str):
                return Path(hit)
    if cfg.url:
        return _find_checkpoint(cfg.url)
    return None


def hub_file(name: str, source: str) -> Path | None:
    """A weight file of `name` in the real download caches, or None."""
    if source == "torchvision":
        for w in torchvision_weights(name):
            hit = _find_checkpoint(w.url)
            if hit:
                return hit
        return None
    return _timm_cached(name)


def status(name: str, source: str) -> WeightsStatus:
    """Which real weights `create_model` would use for `name` right now, from any weights folder."""
    records = _records(name)
    for record in records:
        if _imported(record):
            return WeightsStatus(name, "imported", Path(record["file"]), record.get("head", ""))
    hit = hub_file(name, source)
    if hit is not None:
        seeded = any(r.get("file") and Path(r["file"]).resolve() == hit.resolve() for r in records)
        return WeightsStatus(name, "seeded" if seeded else "hub", hit, "ImageNet-1k")
    for record in records:
        if _seeded(record):
            return WeightsStatus(name, "seeded", Path(record["file"]), record.get("head", ""))
    return WeightsStatus(name, None, None)


# -- what to run when there are none -----------------------------------------------------------------------

def _seedable() -> set[str]:
    # seeding imports timm and torchvision (about a second): only the commands that seed or list need it
    from vislab.models.seeding import SEEDERS

    return {model for model, *_ in SEEDERS}


def _python() -> str:
    return shlex.quote(sys.executable or "python3")


def _env(**values: str | Path) -> str:
    return " ".join(f"{k}={shlex.quote(str(v))}" for k, v in values.items())


def fix_command(name: str) -> str:
    """The exact shell command that makes weights for `name` appear for this server. It sets the variables
    that matter itself, so it works from a shell with any `VISLAB_HOME`.

    For a model set-up can seed from registry packages: `vislab weights seed` into this server's machine
    weights folder (`VISLAB_WEIGHTS`, or the checkout's `.vislab/` that this server searches too). For any
    other model: `vislab weights pull`, torchvision's / timm's own download, which needs the internet.
    """
    if name in _seedable():
        target = paths.seed_home() if os.environ.get("VISLAB_WEIGHTS") else paths.default_home()
        return f"{_env(VISLAB_WEIGHTS=target)} {_python()} -m vislab weights seed"
    caches = {k: os.environ[k] for k in ("TORCH_HOME", "XDG_CACHE_HOME", "HF_HOME", "HF_HUB_CACHE")
              if os.environ.get(k)}  # where this server's torch / Hugging Face caches are
    return f"{_env(**caches)} {_python()} -m vislab weights pull {shlex.quote(name)}".lstrip()


def import_command(name: str, file: str = "FILE") -> str:
    """The shell command that imports a weights file for `name` into this server's lab home."""
    return (f"{_env(VISLAB_HOME=paths.home())} {_python()} -m vislab weights import {file} "
            f"--model {shlex.quote(name)}")


def missing_advice(name: str, source: str | None = None) -> str:
    """What to run so that `name` has pretrained weights on this server, as one Markdown paragraph with the
    exact commands; "" when weights for `name` are already found. `source` ("torchvision" / "timm") defaults
    to the library that knows `name`."""
    source = source or catalog.source_of(name)
    if status(name, source).available:
        return ""
    searched = ("the torch hub cache `" + str(paths.checkpoint_dirs()[0]) + "`, the Hugging Face cache and "
                + ", ".join(f"`{h}`" for h in paths.weights_homes()))
    if name in _seedable():
        text = (f"No pretrained weights for `{name}` found for this server (searched {searched}). "
                f"Run `{fix_command(name)}` on this machine (it seeds them offline from registry "
                "packages, as `bash scripts/setup.sh` does), then reload.")
        failed = [r for r in _records(name) if r.get("error")]
        if failed:
            text += f" The last seeding of `{name}` did not place it: {failed[0]['error'].rstrip('.')}."
        return text
    return (f"No pretrained weights for `{name}` found for this server (searched "
            f"{searched}); no registry package provides them offline. Import a weights file: "
            f"`{import_command(name)}` (or the Model page's import box), or, with internet access, run "
            f"`{fix_command(name)}`; then reload.")


# -- reading files -----------------------------------------------------------------------------------------

def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` or `.pth`/`.pt`/`.bin` file, safely (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise WeightsError(f"{path.name} is not a readable safetensors file ({exc})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            text = str(exc)
            if "weights_only" in text or "Unsupported global" in text:
                raise WeightsError(
                    f"{path.name} refused: it is a pickle that needs code to load, not only tensors. "
                    "Save a plain state_dict (torch.save(model.state_dict(), f)) or a .safetensors file."
                ) from None
            raise WeightsError(f"{path.name} is not a readable PyTorch weights file ({text.splitlines()[0]})") from None
    for key in ("state_dict", "model", "model_state_dict", "module"):  # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path.name} holds no state_dict of tensors")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], skip_prefix: str | None = None) -> None:
    """Raise WeightsError naming the first missing, unexpected or mis-shaped tensor."""
    own = model.state_dict()
    keep = (lambda k: not (skip_prefix and (k == skip_prefix or k.startswith(skip_prefix + "."))))
    missing = [k for k in own if keep(k) and k not in state and not k.endswith("num_batches_tracked")]
    aux = ("aux1.", "aux2.", "AuxLogits.") if getattr(model, "aux_logits", None) is False else ()
    unexpected = [k for k in state if keep(k) and k not in own and not k.startswith(aux or ("\0",))]
    arch = type(model).__name__
    if missing:
        raise WeightsError(f"does not fit {arch}: {len(missing)} tensors missing, first '{missing[0]}'")
    if unexpected:
        raise WeightsError(f"does not fit {arch}: {len(unexpected)} unexpected tensors, first '{unexpected[0]}'")
    for k, v in state.items():
        if keep(k) and tuple(own[k].shape) != tuple(v.shape):
            raise WeightsError(
                f"does not fit {arch}: '{k}' has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}"
            )


def guess_architecture(state: dict[str, torch.Tensor], candidates: list[str] | None = None) -> str | None:
    """The catalog model whose tensor names and shapes best match a state_dict (90% or more), else None."""
    have = {(k, tuple(v.shape)) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    best, best_score = None, 0.0
    for name in candidates or catalog.names():
        with torch.device("meta"):  # shapes only: nothing is allocated
            own = build_architecture(name).state_dict()
        want = {(k, tuple(v.shape)) for k, v in own.items() if not k.endswith("num_batches_tracked")}
        score = len(have & want) / max(len(have | want), 1)
        if score > best_score:
            best, best_score = name, score
    return best if best_score >= 0.9 else None


def import_file(file: str | Path, name: str) -> WeightsStatus:
    """Check a user's weight file against `name`'s architecture and keep a safetensors copy of it."""
    from safetensors.torch import save_file

    state = read_state_dict(file)
    model = build_architecture(name, num_classes=None)
    head = head_name(model)
    try:
        check_fits(model, state, skip_prefix=head)  # the head may have any number of classes
    except WeightsError as exc:
        guess = guess_architecture(state)
        hint = f" The file looks like {guess}'s weights." if guess and guess != name else ""
        raise WeightsError(f"{exc}.{hint}") from None
    head_w = state.get(f"{head}.weight")
    classes = int(head_w.shape[0]) if head_w is not None else None
    if classes is None:
        raise WeightsError(f"the file has no classifier weights '{head}.weight' for {name}")
    target = paths.lab_weights_dir() / f"{name}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(target))
    manifest = _read_json(_manifest_path())  # the lab home's own, not the merged view
    manifest[name] = {
        "model": name, "source": "imported", "file": str(target), "origin": str(Path(file).resolve()),
        "sha256": fileio.digest(target), "head": f"{classes}-class head", "num_classes": classes,
    }
    _write_manifest(manifest)
    return status(name, "timm" if hasattr(model, "pretrained_cfg") else "torchvision")


def pull(name: str, source: str) -> WeightsStatus:
    """Online: download the default pretrained weights with torchvision's / timm's own code."""
    try:
        if source == "torchvision":
            torchvision_weights(name)[0].get_state_dict(progress=True)
        else:
            import timm

            timm.create_model(name, pretrained=True)
    except Exception as exc:
        raise WeightsError(f"could not download weights for {name}: {str(exc).splitlines()[0]}") from None
    return status(name, source)


def convnets_with_weights() -> list[str]:
    """The catalog's convnets (no attention) whose pretrained weights are on this machine."""
    return [e.name for e in catalog.CATALOG if not e.has_attention and status(e.name, e.source).available]
