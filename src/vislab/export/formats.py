"""Exporting a model to one file that other tools open (Netron, onnxruntime, C++), and proving it still works.

  torchscript  `torch.jit.trace` at the model's input size in eval mode, then `torch.jit.save` (.pt).
               Deprecated in torch 2.14 (a FutureWarning, which the result reports), still widely loaded.
  onnx         `torch.onnx.export` with the torch.export-based exporter (it translates with onnxscript),
               opset 18, the weights inside the one file, a dynamic batch axis (.onnx). If onnxscript is
               missing or that exporter fails, the legacy TorchScript-based one is used and a warning says so.
  pt2          `torch.export.export` with a dynamic batch axis, then `torch.export.save` (.pt2).

Every file is loaded back (`torch.jit.load`, an onnxruntime InferenceSession, `torch.export.load(...).module()`)
and run on a batch of random inputs, and on real images when given, next to the PyTorch model. A file whose
outputs differ by more than the tolerance is deleted and the result says why: never offer a file that does
not reproduce the model. The model's train/eval flags are restored and nothing is registered on it.

Warnings raised while exporting (deprecations, TracerWarnings) are caught with `warnings.catch_warnings`,
which is process-wide state: two exports running at once in two threads may see each other's warnings.

An export is redone only when something it depends on changed: `export_key` names the model's exact weights
and structure (`model_digest`, hashed once per model until a tensor of it changes), the format, input size,
destination, tolerance, metadata and check images; `Exports` keeps the verified results by that key and hands
one back while its file on disk is still the one that was checked (same size and mtime).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from vislab._modes import training_mode

FORMATS = ("torchscript", "onnx", "pt2")
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx", "pt2": ".pt2"}
# Default tolerances on the max absolute difference of the outputs (logits). TorchScript and pt2 run the same
# ATen CPU kernels as eager PyTorch, so they agree to float32 rounding (usually exactly); 1e-4 still catches
# any real mistake (a frozen branch is off by O(1)). onnxruntime has its own kernels and fuses Conv+BatchNorm,
# so large pretrained logits move by ~1e-5: 1e-3 leaves room for that and still catches real mistakes.
TOLERANCE = {"torchscript": 1e-4, "onnx": 1e-3, "pt2": 1e-4}
ONNX_OPSET = 18  # the lowest opset the torch.export-based exporter translates to natively; onnxruntime >= 1.14
CHECK_BATCH = 2  # random inputs per check (2, not 1, so a batch size of 1 is never baked into the file)


@dataclass
class ExportResult:
    format: str  # "torchscript" | "onnx" | "pt2"
    path: Path | None  # the written file; None when refused (nothing is left on disk)
    seconds: float = 0.0  # export and save, without the check
    max_abs_diff: float | None = None  # worst |file output - model output| over the checked inputs
    tol: float = 0.0  # the tolerance max_abs_diff was held to
    ok: bool = False  # the file exists and reproduces the model within tol (or could not be checked: `verified`)
    verified: bool = False  # outputs were compared numerically
    reason: str = ""  # why refused, or why not verified; "" when all is well
    warnings: list[str] = field(default_factory=list)  # "FutureWarning: `torch.jit.trace` is deprecated ..."
    size_bytes: int = 0
    checked: str = ""  # what was compared: "2 random inputs, 4 real images"
    key: str = ""  # export_key of what was exported, when it went through `Exports` ("" otherwise)
    reused: bool = False  # handed back by `Exports.export` without exporting again (the model had not changed)

    def summary(self) -> str:
        """One line for a log or the CLI."""
        if not self.ok:
            return f"{self.format}: refused: {self.reason}"
        diff = f"max abs diff {self.max_abs_diff:.2e} (tolerance {self.tol:g}) over {self.checked}" \
            if self.verified else f"not verified: {self.reason}"
        return (f"{self.format}: {self.path} ({self.size_bytes / 1e6:.1f} MB) in {self.seconds:.1f} s; {diff}")


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()  # no terminal colour codes
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _random_inputs(input_size, batch: int, seed: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)  # private generator: the global RNG is left alone
    return torch.randn((batch, *input_size), generator=g).to(device)  # (B, C, H, W), like normalised images


# ----------------------------------------------------------------------------------------------- writers

def metadata(model_name: str, classes: list[str], cfg) -> dict[str, str]:
    """What a program using the file needs besides the graph: class names in output order and the
    preprocessing (size, crop, mean, std). Stored inside the file (TorchScript and pt2 extra files, ONNX
    metadata_props, which Netron shows)."""
    return {"vislab.model": model_name, "vislab.classes": json.dumps(list(classes)),
            "vislab.preprocessing": json.dumps(cfg.to_dict())}


def _write_torchscript(model: nn.Module, example: torch.Tensor, file: Path, notes: list[str],
                       meta: dict[str, str]) -> None:
    traced = torch.jit.trace(model, example, check_trace=False)  # our own check below is stricter
    torch.jit.save(traced, str(file), _extra_files=dict(meta))


def _write_onnx(model: nn.Module, example: torch.Tensor, file: Path, notes: list[str],
                meta: dict[str, str]) -> None:
    _export_onnx(model, example, file, notes)
    if meta:
        import onnx

        graph = onnx.load(str(file))
        for key, value in meta.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(graph, str(file))


def _export_onnx(model: nn.Module, example: torch.Tensor, file: Path, notes: list[str]) -> None:
    names = {"input_names": ["image"], "output_names": ["logits"], "opset_version": ONNX_OPSET}
    try:
        import onnxscript  # noqa: F401  the torch.export-based exporter translates with it

        torch.onnx.export(model, (example,), str(file), dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), **names)
        return
    except ImportError:
        why = "onnxscript is not installed"
    except Exception as exc:  # noqa: BLE001  any failure of the new exporter: try the legacy one
        why = f"the torch.export-based exporter failed ({_first_line(exc)})"
    notes.append(f"ONNX: {why}; used the legacy TorchScript-based exporter instead")
    file.unlink(missing_ok=True)
    torch.onnx.export(model, (example,), str(file), dynamo=False,
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, **names)


def _write_pt2(model: nn.Module, example: torch.Tensor, file: Path, notes: list[str],
               meta: dict[str, str]) -> None:
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, str(file), extra_files=dict(meta))


_WRITERS = {"torchscript": _write_torchscript, "onnx": _write_onnx, "pt2": _write_pt2}


# ----------------------------------------------------------------------------------------------- loaders

def _load(fmt: str, file: Path, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The file as a function of a batch of images, or None when no runtime is installed for it."""
    if fmt == "torchscript":
        return torch.jit.load(str(file), map_location=device)
    if fmt == "pt2":
        return torch.export.load(str(file)).module()
    # onnxruntime's telemetry would write a database under ~/.cache: nothing is written outside the app's folders
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    if hasattr(ort, "disable_telemetry_events"):
        ort.disable_telemetry_events()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: no notes on stderr about pruned initializers
    session = ort.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])

    return run


def _max_diff(run: Callable, model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        want, got = model(x), run(x)
    if not isinstance(want, torch.Tensor) or not isinstance(got, torch.Tensor):
        raise ValueError("export checks models that return one tensor (logits)")
    if got.shape != want.shape:
        raise ValueError(f"the file returns shape {tuple(got.shape)}, the model {tuple(want.shape)}")
    return (got.float().cpu() - want.float().cpu()).abs().max().item()


def _check(model: nn.Module, fmt: str, file: Path, checks: list[tuple[str, torch.Tensor]],
           result: ExportResult) -> None:
    """Fill max_abs_diff, verified, ok and reason by running the file next to the model."""
    run = _load(fmt, file, _device(model))
    if run is None:
        result.ok, result.reason = True, "outputs not compared: onnxruntime is not installed (pip install onnxruntime)"
        return
    diffs = [(_max_diff(run, model, x), label) for label, x in checks]
    worst, where = max(diffs, key=lambda d: math.inf if math.isnan(d[0]) else d[0])  # NaN is the worst
    result.max_abs_diff, result.verified = worst, True
    result.checked = ", ".join(f"{len(x)} {label}" for label, x in checks)
    result.ok = worst <= result.tol
    if not result.ok:
        result.reason = (f"the {fmt} file does not reproduce the model: max abs diff {worst:.3g} on the "
                         f"{where} > tolerance {result.tol:g}")


def _hint(result: ExportResult) -> str:
    """Why a traced file may compute something else: the TracerWarning that said so, if any."""
    tracer = [w for w in result.warnings if w.startswith("TracerWarning")]
    if result.format == "pt2" or not tracer:
        return ""
    return (" (tracing records one path through forward: data-dependent control flow was frozen; "
            f"{tracer[0].split('. ')[0]})")


def export_model(model: nn.Module, input_size: tuple[int, int, int], path: str | Path, fmt: str,
                 real_inputs: torch.Tensor | None = None, tol: float | None = None,
                 meta: dict[str, str] | None = None) -> ExportResult:
    """Export `model` in eval mode as `fmt` to `path`, reload the file and check it against the model.

    input_size: (C, H, W) the model sees (its data config, e.g. `info.data_config.input_size`).
    real_inputs: optional (B, C, H, W) prepared images checked besides the random batch.
    tol: max abs difference accepted; None for the format's default (TOLERANCE says why).
    meta: strings stored inside the file (`metadata(...)`: class names and preprocessing).
    Refused exports (failure, or outputs off by more than tol) leave no file: `ok` False and `reason` says why.
    The file is written in a temporary folder beside `path` and moved there when it passed, so an older
    file at `path` is replaced only by a good one.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not '{fmt}'")
    tol = TOLERANCE[fmt] if tol is None else tol
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # written under its final name in a private folder beside it (torch names a .pt/.pt2 archive's root
    # folder after the file, and Netron skips a root that starts with a dot), moved into place when good
    workdir = Path(tempfile.mkdtemp(prefix=".vislab-export-", dir=path.parent))
    partial = workdir / path.name
    device = _device(model)
    example = _random_inputs(input_size, CHECK_BATCH, seed=0, device=device)
    checks = [("random inputs", _random_inputs(input_size, CHECK_BATCH, seed=1, device=device))]
    if real_inputs is not None:
        checks.append(("real images", real_inputs.to(device)))
    result = ExportResult(fmt, None, tol=tol)
    try:
        with training_mode(model, False):
            _export_and_check(model, fmt, partial, example, checks, result, meta or {})
        if result.ok:
            os.replace(partial, path)
            result.path, result.size_bytes = path, path.stat().st_size
        else:
            result.reason += _hint(result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _export_and_check(model: nn.Module, fmt: str, file: Path, example: torch.Tensor,
                      checks: list[tuple[str, torch.Tensor]], result: ExportResult, meta: dict[str, str]) -> None:
    """Write `file` and check it, recording every warning raised meanwhile (deduplicated) in the result."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            start = time.perf_counter()
            _WRITERS[fmt](model, example, file, result.warnings, meta)
            result.seconds = time.perf_counter() - start
            _check(model, fmt, file, checks, result)
        except Exception as exc:  # noqa: BLE001  any failure is a refusal with its reason
            result.ok, result.reason = False, f"{fmt} export failed: {_first_line(exc)}"
    for w in caught:
        text = f"{w.category.__name__}: {' '.join(str(w.message).split())}"
        if text not in result.warnings:
            result.warnings.append(text)


# ----------------------------------------------------------------------------------------------- reuse

_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (fingerprint, digest)
_DIGESTS_LOCK = threading.Lock()


def _fingerprint(model: nn.Module) -> tuple:
    """Cheap: which tensor objects the model holds and how often each was written in place (`_version`, which
    an optimizer step, `copy_` and `load_state_dict` all bump): equal fingerprints, equal weights."""
    return tuple((name, id(t), t.data_ptr(), t._version, tuple(t.shape))
                 for name, t in model.state_dict(keep_vars=True).items())


def model_digest(model: nn.Module) -> str:
    """A hex digest of the model's structure (module names and types) and every parameter and buffer (name,
    dtype, shape, bytes). Hashed once per model object; later calls only compare a cheap fingerprint (a few ms
    for a convnet) and hash again after any tensor changed."""
    fingerprint = _fingerprint(model)
    with _DIGESTS_LOCK:
        known = _DIGESTS.get(model)
    if known is not None and known[0] == fingerprint:
        return known[1]
    h = hashlib.blake2b(digest_size=20)
    h.update(repr([(name, type(m).__name__) for name, m in model.named_modules()]).encode())
    with torch.no_grad():
        for name, t in model.state_dict().items():
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            flat = t.detach().cpu().contiguous().reshape(-1)
            h.update(flat.view(torch.uint8).numpy() if flat.numel() else b"")  # the raw bytes, any dtype
    digest = h.hexdigest()
    with _DIGESTS_LOCK:
        _DIGESTS[model] = (fingerprint, digest)
    return digest


def export_key(model: nn.Module, input_size, path: str | Path, fmt: str, tol: float | None = None,
               meta: dict[str, str] | None = None, inputs: str = "") -> str:
    """What `export_model(model, input_size, path, fmt, tol=tol, meta=meta, real_inputs=...)` depends on, as one
    string: the model's weights and structure, the format, input size, destination, tolerance, metadata, the
    check images (`inputs`: a description of them, e.g. their names and preprocessing) and the torch version.
    Equal keys: exporting again would write the same file and run the same check."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not '{fmt}'")
    parts = [model_digest(model), fmt, [int(v) for v in input_size], str(Path(path).absolute()),
             TOLERANCE[fmt] if tol is None else float(tol), sorted((meta or {}).items()), inputs, torch.__version__]
    return hashlib.blake2b(json.dumps(parts).encode(), digest_size=16).hexdigest()


class Exports:
    """Verified exports by `export_key`, reused while their file is untouched; at most `max_entries` (the
    least recently used go). Thread-safe: one instance can serve every session of a server."""

    def __init__(self, max_entries: int = 64):
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[ExportResult, tuple[int, int]]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns

    def get(self, key: str) -> ExportResult | None:
        """The verified export of `key`, if its file is still the one that was written and checked."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            result, stamp = entry
            if self._stamp(result.path) != stamp:  # deleted, or replaced by another export: not offered
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return result

    def put(self, key: str, result: ExportResult) -> None:
        """Keep `result` under `key` when it is a verified file (refusals and unchecked files are not kept)."""
        stamp = self._stamp(result.path) if result.ok and result.verified and result.path else None
        if stamp is None:
            return
        result.key = key
        with self._lock:
            self._entries[key] = (result, stamp)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def export(self, model: nn.Module, input_size, path: str | Path, fmt: str, key: str | None = None,
               inputs: str = "", **kwargs) -> ExportResult:
        """`export_model(...)`, or the kept result of the same key (`reused` True, nothing run). `key`: the
        caller's export_key of the same arguments (computed here when None)."""
        key = key or export_key(model, input_size, path, fmt, kwargs.get("tol"), kwargs.get("meta"), inputs)
        known = self.get(key)
        if known is not None:
            return dataclasses.replace(known, reused=True)
        result = export_model(model, input_size, path, fmt, **kwargs)
        result.key = key
        self.put(key, result)
        return result


def export_name(model_name: str, strategy: str | None, fmt: str, when: dt.date | None = None) -> str:
    """A download name: `mobilenet_v2_head_2026-11-28.pt` (`.onnx`, `.pt2`); today when `when` is None."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not '{fmt}'")
    when = when or dt.date.today()
    parts = [p for p in (model_name, strategy) if p]
    safe = "_".join(re.sub(r"[^A-Za-z0-9._-]+", "-", p).strip("-.") for p in parts)
    return f"{safe}_{when:%Y-%m-%d}{SUFFIX[fmt]}"
