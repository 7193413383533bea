"""The frozen prefix at the hardware's speed: PyTorch or ONNX Runtime, whichever is faster on a probe batch.

Head-only training runs the frozen prefix once over the data (feature_cache.py), so that one inference pass
is the whole cost. PyTorch eager is slow at it on a CPU; ONNX Runtime runs MobileNetV2's features 3-4x
faster with the same numbers. Here the prefix is exported once (prefix.PrefixModule: the model run until its
last frozen module, with a dynamic batch axis), checked against PyTorch on a probe batch (relative max
difference within `TOLERANCE` of the output's scale, else refused with the reason), both are timed on that
probe, and the faster one is kept. Exports and their measurements live on disk under the lab's work folder,
keyed by everything that changes the graph (model, prefix cut, prefix.fingerprint of its weights, input
shape, library versions), so a second run pays neither the export nor the timing.

`torch.compile` is not offered: its warm-up (20-60 s on 2 cores) is longer than a whole 300-image pass.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata  # not `import onnx`: it takes ~0.6 s, and only an export needs it
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from vislab import _fileio as fileio, _paths as paths
from vislab._modes import inference
from vislab.training.prefix import PrefixModule, fingerprint

ENGINES = ("auto", "torch", "onnxruntime")
TOLERANCE = 1e-4  # largest |onnx - torch| allowed, relative to max |torch| of the probe's prefix output
MIN_PASS_SECONDS = 1.0  # auto: a pass torch finishes sooner than this cannot pay for an export (0.3-1 s; it
# is kept on disk and reused by every later run on the server, so one that saves less per run still pays)
AUTO_MARGIN = 1.1  # auto: onnxruntime must beat torch by this on the probe (timing noise is ~5-10%)
OPSET = 17
KEEP_EXPORTS = 24  # exported prefixes kept on disk (the oldest go first)
# On a CPU a convnet prefix run a few images at a time is much faster per image than at a training batch of
# 32: MobileNetV2's activations (32 x 112 x 112 x 32 floats, 51 MB) no longer fit in the cache. Measured on
# 2 cores, 300 images, channels_last torch: 1.3 s 4 at a time, 1.7 s 8, 3.3 s 16, 4.1 s 32; onnxruntime
# 0.8 s vs 0.9-1.2 s. Each engine times its probe both ways and keeps the faster (no chunks on a GPU).
CHUNK = 4


class EngineError(ValueError):
    """An engine name that is not one of ENGINES."""


@dataclass
class Engine:
    name: str  # torch | onnxruntime (CPU) | onnxruntime-cuda
    run: Callable[[torch.Tensor], torch.Tensor]  # (B, C, H, W) images -> (B, ...) prefix output
    speedup: float | None = None  # torch seconds / onnxruntime seconds on the probe; None: not measured
    note: str = ""  # why this engine: asked for, measured, or why onnxruntime was refused
    reused: bool = False  # the export (and its measurement) came from the disk cache
    chunk: int | None = None  # images per call when a batch runs in chunks (faster on this CPU); None: whole
    probe_output: torch.Tensor | None = field(default=None, repr=False)  # the probe's prefix outputs
    seconds_per_image: float = 0.0  # this engine on the probe (measured there, or from the record)

    def describe(self) -> str:
        chunks = f", {self.chunk} images a call" if self.chunk else ""
        if self.name == "torch":
            return f"torch{chunks} ({self.note})" if self.note else f"torch{chunks}"
        measured = f", {self.speedup:.1f}x torch on a probe batch" if self.speedup else ""
        return f"{self.name}{measured}{chunks}" + (f" ({self.note})" if self.note else "")


def choose(model: nn.Module, stubs: list[str], probe: torch.Tensor, choice: str = "auto", pass_images: int = 0,
           name: str = "", memory_format: torch.memory_format = torch.contiguous_format,
           digest: str | None = None) -> Engine:
    """The engine that runs the prefix ending at `stubs[-1]` (the model's frozen modules, in order).

    `probe` (B, C, H, W) is a batch of real images on the model's device, B >= 2: the caching pass hands
    over its first batch, and the measurement is that batch's own work, not extra runs: its prefix outputs
    come back in `Engine.probe_output`. `choice`: auto (onnxruntime when it agrees and beats torch by
    AUTO_MARGIN), torch, or onnxruntime (forced; falls back to torch, with the reason, when refused).
    `pass_images` (how many images the pass will run) lets auto skip an export that cannot pay. Images
    come in as the loader gives them (NCHW); the torch engine puts them in `memory_format` (the model's:
    channels_last after training.fit), onnxruntime takes them as they are, so no batch is converted twice.
    On a CPU each engine runs a batch `CHUNK` images at a time when that is faster on the probe (CHUNK).
    `digest` is prefix.fingerprint of the stubs when the caller has it already (it keys the export)."""
    if choice not in ENGINES:
        raise EngineError(f"unknown engine '{choice}': use {', '.join(ENGINES)}")
    run = _torch_runner(model, stubs[-1], memory_format)
    if choice == "torch":
        return _torch_timed(run, probe, "asked for")
    why, providers = _unavailable(probe.device)
    if why:
        return _torch_timed(run, probe, f"onnxruntime {why}")
    export = _Export.find(model, stubs, probe, name, digest)
    if export.refused:  # the exporter failed on this very prefix before
        return _torch_timed(run, probe, f"onnxruntime refused: {export.refused}")
    if export.speedup is not None and choice == "auto" and export.speedup < AUTO_MARGIN:  # measured: torch won
        return _torch_known(run, probe, f"as fast here: onnxruntime ran the probe at {export.speedup:.2f}x torch",
                            export.record.get("torch_chunk"), export.speedup, export.reused)
    race = _Race(run, probe, export)
    if choice == "auto" and not export.reused:  # would an export pay? the guess from the timed probe
        guess = race.seconds * pass_images
        if guess < MIN_PASS_SECONDS:
            return race.torch(f"the pass takes ~{guess:.1f} s in torch: an onnxruntime export would not pay "
                              "for itself")
    try:
        ort_run = export.runner(probe, providers)
    except _Refused as exc:
        return race.torch(f"onnxruntime refused: {exc}")
    return race.onnx(ort_run, choice, "onnxruntime-cuda" if providers[0].startswith("CUDA") else "onnxruntime")


def _torch_runner(model: nn.Module, last: str, memory_format: torch.memory_format
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The prefix in torch, in eval, on images put in the model's `memory_format`."""
    prefix = PrefixModule(model, last)

    def run(x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.contiguous(memory_format=memory_format)
        with inference(model):
            return prefix(x).detach().clone()

    return run


def _torch_timed(run, probe: torch.Tensor, note: str) -> Engine:
    """torch, run on the probe both ways (whole batch, in chunks: _fastest), the faster kept."""
    chunk, per_image, out = _fastest(run, probe)
    return Engine("torch", _chunked(run, chunk), None, note, False, chunk, out, per_image)


def _torch_known(run, probe: torch.Tensor, note: str, chunk: int | None, speedup: float | None,
                 reused: bool) -> Engine:
    """torch in the chunk measured before (a record's), run on the probe and timed."""
    seconds, out = _timed(_chunked(run, chunk), probe)
    return Engine("torch", _chunked(run, chunk), speedup, note, reused, chunk, out, seconds / len(probe))


@dataclass
class _Export:
    """A prefix's export on disk (`<key>.onnx`, export_key) and its record beside it (`<key>.json`: the
    engines measured on a device type and thread count, or why the exporter refused the prefix)."""

    model: nn.Module
    stubs: list[str]
    name: str
    path: Path
    record: dict
    reused: bool  # the export was on disk before this choice
    speedup: float | None  # onnxruntime over torch, measured before on this device type and thread count
    threads: int  # torch's: onnxruntime runs on as many

    @classmethod
    def find(cls, model: nn.Module, stubs: list[str], probe: torch.Tensor, name: str = "",
             digest: str | None = None) -> _Export:
        path = exports_dir() / f"{export_key(model, stubs, probe, name, digest)}.onnx"
        record, threads = _read_record(path.with_suffix(".json")), torch.get_num_threads()
        here = record.get("threads") == threads and record.get("device") == probe.device.type
        speedup = record.get("speedup") if here and "ort_chunk" in record else None
        return cls(model, stubs, name, path, record, path.exists(), speedup, threads)

    @property
    def refused(self) -> str:
        """Why the exporter failed on this prefix before ("" when it did not, or an export is here now)."""
        return "" if self.reused else self.record.get("refused") or ""

    def runner(self, probe: torch.Tensor, providers: list[str]) -> Callable[[torch.Tensor], torch.Tensor]:
        """onnxruntime running the export (made now when it is not on disk); raises _Refused with the reason."""
        blob = self.path.read_bytes() if self.reused else _export_to(self.path, self.model, self.stubs, probe,
                                                                     self.name)
        try:
            session = _session(blob, providers, self.threads)
        except Exception as exc:  # noqa: BLE001
            raise _Refused(f"its session cannot load the export ({_short(exc)})") from exc
        return _ort_runner(session, probe.device)

    def remember(self, measured: dict) -> None:
        """Write the engines' measurement beside the export: the next run on this device need not measure."""
        _write_record(self.path.with_suffix(".json"), {**measured, "threads": self.threads,
                                                       "stubs": list(self.stubs), "model": self.name})


class _Race:
    """torch against onnxruntime on the probe batch, each of its images run once: to be measured, torch
    runs (and times) the probe's first half and onnxruntime its second (a training batch of 32: 4 + 4 + 8
    and 8 + 8; a small probe: each engine times all of it), and those outputs are the probe's features
    whichever engine wins. Measured before (the record), torch runs only the images of the check."""

    def __init__(self, run, probe: torch.Tensor, export: _Export):
        self.run, self.probe, self.export = run, probe, export
        # the check: onnxruntime on the probe's first images (a batch size other than the export's 2, so it
        # also proves the batch axis dynamic) against torch on the same images
        self.check = probe[:min(CHUNK, len(probe))]
        self.measuring = export.speedup is None
        self.half = len(probe) // 2 if self.measuring and len(probe) >= 6 * CHUNK else len(probe)
        if self.measuring:  # torch runs (its part of) the probe, timed; its outputs are those images' features
            self.chunk, self.seconds, self.ref = _fastest(run, probe[:self.half])
        else:
            self.chunk, self.seconds, self.ref = export.record.get("torch_chunk"), 0.0, run(self.check)

    def torch(self, note: str, speedup: float | None = None, tail: torch.Tensor | None = None) -> Engine:
        """torch, with the probe's features: its own, and for the probe's second half `tail` (what
        onnxruntime computed there, checked equal) or torch's run of it."""
        if not self.measuring:
            return _torch_known(self.run, self.probe, note, self.chunk, speedup, self.export.reused)
        out = self.ref
        if self.half < len(self.probe):
            rest = tail if tail is not None else _chunked(self.run, self.chunk)(self.probe[self.half:])
            out = torch.cat([self.ref, rest])
        return Engine("torch", _chunked(self.run, self.chunk), speedup, note, self.export.reused, self.chunk, out,
                      self.seconds)

    def onnx(self, ort_run, choice: str, ort_name: str) -> Engine:
        """onnxruntime, once its outputs on the check agree with torch's and (auto) it is measured faster."""
        try:
            out = ort_run(self.check)
        except Exception as exc:  # noqa: BLE001
            return self.torch(f"onnxruntime refused: it failed on a probe batch ({_short(exc)})")
        diff = relative_difference(out, self.ref[:len(self.check)])
        if diff > TOLERANCE:
            return self.torch(f"onnxruntime refused: its outputs differ from torch's by {diff:.1e} of their "
                              f"scale (over {TOLERANCE:.0e}: a data-dependent branch or constant in the forward?)")
        reused = self.export.reused
        note = "export reused" if reused else ""
        if not self.measuring:  # known: onnxruntime runs the probe, its outputs are the probe's features
            chunk = self.export.record.get("ort_chunk")
            seconds, features = _timed(_chunked(ort_run, chunk), self.probe)
            return Engine(ort_name, _chunked(ort_run, chunk), self.export.speedup, note, reused, chunk, features,
                          seconds / len(self.probe))
        split = self.half < len(self.probe)  # onnxruntime times its part (the check above was its warm-up)
        chunk, seconds, tail = _fastest(ort_run, self.probe[self.half:] if split else self.probe, warm=False)
        speedup = self.seconds / max(seconds, 1e-12)
        self.export.remember({"speedup": speedup, "device": self.probe.device.type, "torch_chunk": self.chunk,
                              "ort_chunk": chunk, "torch_seconds_per_image": self.seconds,
                              "ort_seconds_per_image": seconds, "max_relative_difference": diff})
        if choice == "auto" and speedup < AUTO_MARGIN:
            return self.torch(f"as fast here: onnxruntime ran the probe at {speedup:.2f}x torch", speedup,
                              tail if split else None)
        features = torch.cat([self.ref, tail]) if split else self.ref  # torch's half, then onnxruntime's
        return Engine(ort_name, _chunked(ort_run, chunk), speedup, note, reused, chunk, features, seconds)


class _Refused(Exception):
    """The exporter or onnxruntime cannot take a prefix (the reason)."""


def _export_to(path: Path, model: nn.Module, stubs: list[str], probe: torch.Tensor, name: str) -> bytes:
    """The prefix exported (traced on two probe images) and written to `path`; a failure is recorded beside
    it (not retried) and raised as _Refused with the reason."""
    try:
        blob = export(model, stubs, probe[:2].contiguous())
    except Exception as exc:  # noqa: BLE001  any exporter failure means: this prefix stays in torch
        why = f"the exporter cannot take this prefix ({_short(exc)})"
        _write_record(path.with_suffix(".json"), {"refused": why, "stubs": list(stubs), "model": name})
        raise _Refused(why) from exc
    try:
        fileio.write_bytes(path, blob)
        _prune(path.parent)
    except OSError:  # a full or read-only disk: this run still uses the export, the next one redoes it
        pass
    return blob


def export_ahead(model: nn.Module, stubs: list[str], probe: torch.Tensor, name: str = "") -> str:
    """Export the prefix ahead of any run (set-up does it for the seeded models' head-only prefix), so the
    first run that caches it reuses the export and only measures the engines, on its own first batch.
    Returns what happened, in words."""
    why, _ = _unavailable(probe.device)
    if why:
        return f"onnxruntime {why}"
    found = _Export.find(model, stubs, probe, name)
    if found.reused:
        return f"already exported ({found.path.name})"
    if found.refused:
        return f"refused earlier: {found.refused}"
    start = time.perf_counter()
    try:
        _export_to(found.path, model, stubs, probe, name)
    except _Refused as exc:
        return f"refused: {exc}"
    return f"exported in {time.perf_counter() - start:.1f} s ({found.path.name})"


def _fastest(run, x: torch.Tensor, warm: bool = True) -> tuple[int | None, float, torch.Tensor]:
    """(chunk, seconds per image, outputs for all of `x`): `x` run once, part as one batch and part CHUNK
    images at a time, whichever is faster per image is kept. The first CHUNK images go first, untimed
    (the first call pays kernel set-up; `warm` False: it was paid already). Chunks are tried only on a
    CPU, for a batch of 3 CHUNKs or more (torch's half of a training batch of 32: 4 untimed, 4 in chunks, 8
    at once)."""
    head = min(CHUNK, len(x)) if warm else 0
    outs = [run(x[:head])] if head else []
    rest = x[head:]
    if not len(rest):  # a probe of CHUNK images or fewer: time it again, whole
        seconds, out = _timed(run, x)
        return None, seconds / len(x), out
    if x.device.type != "cpu" or len(rest) < 2 * CHUNK:
        seconds, out = _timed(run, rest)
        return None, seconds / len(rest), torch.cat([*outs, out])
    half = len(rest) // 2 // CHUNK * CHUNK
    t_chunk, a = _timed(_chunked(run, CHUNK), rest[:half])
    t_whole, b = _timed(run, rest[half:])
    per_chunk, per_whole = t_chunk / half, t_whole / (len(rest) - half)
    out = torch.cat([*outs, a, b])
    return (CHUNK, per_chunk, out) if per_chunk < per_whole else (None, per_whole, out)


def _chunked(run, chunk: int | None):
    """`run` applied `chunk` images at a time (None: the whole batch at once), outputs concatenated."""
    if not chunk:
        return run

    def run_chunks(x: torch.Tensor) -> torch.Tensor:
        if len(x) <= chunk:
            return run(x)
        return torch.cat([run(x[i:i + chunk]) for i in range(0, len(x), chunk)])

    return run_chunks


def preload() -> None:
    """Import what an export needs (onnx alone takes ~0.6 s) ahead of time: a spare job worker calls it
    while it waits, so a job that exports does not pay it."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import torch.onnx  # noqa: F401
    except ImportError:
        pass


def export(model: nn.Module, stubs: list[str], x: torch.Tensor) -> bytes:
    """The prefix as an ONNX graph (TorchScript exporter, dynamic batch axis), traced on `x`."""
    buffer = io.BytesIO()
    with inference(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings: a data-dependent forward shows up in the check
        torch.onnx.export(PrefixModule(model, stubs[-1]), (x,), buffer, dynamo=False, opset_version=OPSET,
                          input_names=["images"], output_names=["features"],
                          dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
    return buffer.getvalue()


def export_key(model: nn.Module, stubs: list[str], probe: torch.Tensor, name: str = "",
               digest: str | None = None) -> str:
    """Everything that changes the exported graph: the model's name and class, the prefix cut, its modules'
    structure and weights (prefix.fingerprint, or `digest` when the caller computed it), the input's
    non-batch shape, and the library versions."""
    h = hashlib.sha256()
    for part in (name, type(model).__qualname__, *stubs, str(tuple(probe.shape[1:])), str(probe.dtype),
                 torch.__version__, metadata.version("onnx"), metadata.version("onnxruntime"), str(OPSET)):
        h.update(part.encode() + b"\0")
    h.update((digest or fingerprint(model, stubs)).encode())
    return f"{(name or type(model).__name__)[:40]}-{h.hexdigest()[:20]}"


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: how far `a` is from the reference `b`, on `b`'s scale."""
    if a.shape != b.shape:
        return float("inf")
    scale = float(b.abs().max()) if b.numel() else 0.0
    return float((a.float() - b.float()).abs().max()) / max(scale, 1e-12) if b.numel() else 0.0


def exports_dir() -> Path:
    return paths.work_dir() / paths.ENGINE_EXPORTS


def _unavailable(device: torch.device) -> tuple[str, list[str]]:
    """('', providers) when onnxruntime can run on `device`, else (why not, [])."""
    try:
        import onnxruntime  # optional (pip install onnxruntime onnx), and only a choice between engines needs it
    except ImportError:
        onnxruntime = None
    if onnxruntime is None or importlib.util.find_spec("onnx") is None:  # the exporter needs onnx
        return "is not installed (pip install onnxruntime onnx)", []
    available = onnxruntime.get_available_providers()
    if device.type == "cpu":
        return "", ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        return "", ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return f"has no provider for {device.type} here (only {', '.join(available)})", []


def _session(graph: bytes, providers: list[str], threads: int):
    import onnxruntime  # optional: _unavailable found it

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # the same cores torch would use, not one thread per core more
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(graph, options, providers=providers)


def _ort_runner(session, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        images = x.detach().to("cpu").float().contiguous().numpy()  # (B, C, H, W) in NCHW order
        out = session.run(["features"], {"images": images})[0]
        return torch.from_numpy(out).to(device)

    return run


def _timed(run, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = run(x)
    return time.perf_counter() - start, out


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:140]}"


def _read_record(path: Path) -> dict:
    try:
        record = fileio.read_json(path, {})
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(path: Path, record: dict) -> None:
    try:
        fileio.write_json(path, record)
    except OSError:  # a full or read-only disk: the next run measures again
        pass


def _prune(folder: Path) -> None:
    exports = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in exports[KEEP_EXPORTS:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
    records = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in records[4 * KEEP_EXPORTS:]:  # refusals have no export beside them
        old.unlink(missing_ok=True)
