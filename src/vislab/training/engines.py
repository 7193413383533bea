"""The frozen prefix at the hardware's speed: PyTorch or ONNX Runtime, whichever is faster on a probe batch.

Head-only training runs the frozen prefix once over the data (caching.py), so that one inference pass is
the whole cost. PyTorch eager is slow at it on a CPU; ONNX Runtime runs MobileNetV2's features 3-4x faster
with the same numbers. Here the prefix is exported once (`PrefixModule`: the model run until its last
frozen module, with a dynamic batch axis), checked against PyTorch on a probe batch (relative max
difference within `TOLERANCE` of the output's scale, else refused with the reason), both are timed on that
probe, and the faster one is kept. Exports and their measurements live on disk under the lab's work folder,
keyed by everything that changes the graph (model, prefix cut, a digest of the prefix's weights, input
shape, library versions), so a second run pays neither the export nor the timing.

`torch.compile` is not offered: its warm-up (20-60 s on 2 cores) is longer than a whole 300-image pass.
"""

from __future__ import annotations

import hashlib
import io
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from vislab._modes import training_mode

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


class PrefixModule(nn.Module):
    """The model run up to the end of its prefix: the forward stops (by an exception from a forward hook)
    once the last stub has produced its output, which is returned. Works for any forward, chain or not."""

    def __init__(self, model: nn.Module, last: str):
        super().__init__()
        self.model, self.last = model, last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: list[torch.Tensor] = []

        def capture(module, args, output):
            out.append(output)
            raise _Stop

        handle = self.model.get_submodule(self.last).register_forward_hook(capture)
        try:
            self.model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        return out[-1]  # (B, ...) a pooled vector, or a spatial map for an attention head


class _Stop(Exception):
    pass


def choose(model: nn.Module, stubs: list[str], probe: torch.Tensor, choice: str = "auto", pass_images: int = 0,
           name: str = "", memory_format: torch.memory_format = torch.contiguous_format) -> Engine:
    """The engine that runs the prefix ending at `stubs[-1]` (the model's frozen modules, in order).

    `probe` (B, C, H, W) is a batch of real images on the model's device, B >= 2: the caching pass hands
    over its first batch, and the measurement is that batch's own work, not extra runs: its prefix outputs
    come back in `Engine.probe_output`. `choice`: auto (onnxruntime when it agrees and beats torch by
    AUTO_MARGIN), torch, or onnxruntime (forced; falls back to torch, with the reason, when refused).
    `pass_images` (how many images the pass will run) lets auto skip an export that cannot pay. Images
    come in as the loader gives them (NCHW); the torch engine puts them in `memory_format` (the model's:
    channels_last after training.fit), onnxruntime takes them as they are, so no batch is converted twice.
    On a CPU each engine runs a batch `CHUNK` images at a time when that is faster on the probe (CHUNK)."""
    if choice not in ENGINES:
        raise EngineError(f"unknown engine '{choice}': use {', '.join(ENGINES)}")
    prefix = PrefixModule(model, stubs[-1])

    @torch.no_grad()
    def torch_batch(x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.contiguous(memory_format=memory_format)
        with training_mode(model, False):
            return prefix(x).detach().clone()

    def in_torch(note: str, chunk: int | None = None, speedup: float | None = None, reused: bool = False,
                 known: bool = False) -> Engine:
        """torch runs the probe: in its recorded chunk (`known`), else timed both ways (_fastest)."""
        if known:
            seconds, out = _timed(_chunked(torch_batch, chunk), probe)
            per_image = seconds / len(probe)
        else:
            chunk, per_image, out = _fastest(torch_batch, probe)
        return Engine("torch", _chunked(torch_batch, chunk), speedup, note, reused, chunk, out, per_image)

    why, providers = ("", []) if choice == "torch" else _unavailable(probe.device)
    if choice == "torch":
        return in_torch("asked for")
    if why:
        return in_torch(f"onnxruntime {why}")
    key = export_key(model, stubs, probe, name)
    folder = exports_dir()
    path, record_path = folder / f"{key}.onnx", folder / f"{key}.json"
    record = _read_record(record_path)
    threads = torch.get_num_threads()
    measured = record.get("speedup") if record.get("threads") == threads and record.get("device") == \
        probe.device.type and "ort_chunk" in record else None
    if record.get("refused") and not path.exists():  # the exporter failed on this very prefix before
        return in_torch(f"onnxruntime refused: {record['refused']}")
    reused = path.exists()
    if measured is not None and choice == "auto" and measured < AUTO_MARGIN:  # measured before: torch won
        return in_torch(f"as fast here: onnxruntime ran the probe at {measured:.2f}x torch", record.get(
            "torch_chunk"), measured, reused, known=True)
    # the check: onnxruntime on the probe's first images (a batch size other than the export's 2, so it
    # also proves the batch axis dynamic) against torch on the same images
    check = probe[:min(CHUNK, len(probe))]
    # to be measured: torch times the probe's first half, onnxruntime its second (a training batch of 32:
    # 4 + 4 + 8 and 8 + 8), so each image of it runs once; a small probe: each engine times all of it
    half = len(probe) // 2 if measured is None and len(probe) >= 6 * CHUNK else len(probe)
    if measured is None:  # torch runs (its part of) the probe, timed; its outputs are those images' features
        torch_chunk, t_torch, ref = _fastest(torch_batch, probe[:half])
    else:
        torch_chunk, t_torch, ref = record.get("torch_chunk"), 0.0, torch_batch(check)
    torch_ran_probe = measured is None

    def fallback(note: str, speedup: float | None = None, tail: torch.Tensor | None = None) -> Engine:
        """torch, with the probe's features: its own, and for the probe's second half `tail` (what
        onnxruntime computed there, checked equal) or torch's run of it."""
        if not torch_ran_probe:
            return in_torch(note, torch_chunk, speedup, reused, known=True)
        out = ref
        if half < len(probe):
            out = torch.cat([ref, tail if tail is not None else _chunked(torch_batch, torch_chunk)(probe[half:])])
        return Engine("torch", _chunked(torch_batch, torch_chunk), speedup, note, reused, torch_chunk, out,
                      t_torch)

    if choice == "auto" and not reused:  # would an export pay? the guess from the timed probe
        guess = t_torch * pass_images
        if guess < MIN_PASS_SECONDS:
            return fallback(f"the pass takes ~{guess:.1f} s in torch: an onnxruntime export would not pay "
                            "for itself")
    if not reused:
        try:
            blob = _export_to(path, model, stubs, probe, name)
        except _Refused as exc:
            return fallback(f"onnxruntime refused: {exc}")
    else:
        blob = path.read_bytes()
    try:
        session = _session(blob, providers, threads)
    except Exception as exc:  # noqa: BLE001
        return fallback(f"onnxruntime refused: its session cannot load the export ({_short(exc)})")
    ort_batch = _ort_runner(session, probe.device)
    try:
        out = ort_batch(check)
    except Exception as exc:  # noqa: BLE001
        return fallback(f"onnxruntime refused: it failed on a probe batch ({_short(exc)})")
    diff = relative_difference(out, ref[:len(check)])
    if diff > TOLERANCE:
        return fallback(f"onnxruntime refused: its outputs differ from torch's by {diff:.1e} of their scale "
                        f"(over {TOLERANCE:.0e}: a data-dependent branch or constant in the forward?)")
    if measured is None:  # onnxruntime times its part of the probe (the check above was its warm-up)
        ort_chunk, t_ort, tail = _fastest(ort_batch, probe[half:] if half < len(probe) else probe, warm=False)
        measured = t_torch / max(t_ort, 1e-12)
        _write_record(record_path, {"speedup": measured, "threads": threads, "device": probe.device.type,
                                    "torch_chunk": torch_chunk, "ort_chunk": ort_chunk,
                                    "torch_seconds_per_image": t_torch, "ort_seconds_per_image": t_ort,
                                    "max_relative_difference": diff, "stubs": list(stubs), "model": name})
        if choice == "auto" and measured < AUTO_MARGIN:
            return fallback(f"as fast here: onnxruntime ran the probe at {measured:.2f}x torch", measured,
                            tail if half < len(probe) else None)
        if half < len(probe):
            ref = torch.cat([ref, tail])  # the probe's features: torch's half, then onnxruntime's
    else:  # known: onnxruntime runs the probe, its outputs are the probe's features
        ort_chunk = record.get("ort_chunk")
        seconds, ref = _timed(_chunked(ort_batch, ort_chunk), probe)
        t_ort = seconds / len(probe)
    ort_name = "onnxruntime-cuda" if providers[0].startswith("CUDA") else "onnxruntime"
    return Engine(ort_name, _chunked(ort_batch, ort_chunk), measured, "export reused" if reused else "", reused,
                  ort_chunk, ref, t_ort)


class _Refused(Exception):
    """The exporter cannot take a prefix (the reason, recorded beside where its export would be)."""


def _export_to(path: Path, model: nn.Module, stubs: list[str], probe: torch.Tensor, name: str) -> bytes:
    """The prefix exported (traced on two probe images) and written to `path`; a failure is recorded beside
    it (not retried) and raised as _Refused with the reason."""
    from vislab import _fileio as fileio

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
    path = exports_dir() / f"{export_key(model, stubs, probe, name)}.onnx"
    if path.exists():
        return f"already exported ({path.name})"
    record = _read_record(path.with_suffix(".json"))
    if record.get("refused"):
        return f"refused earlier: {record['refused']}"
    start = time.perf_counter()
    try:
        _export_to(path, model, stubs, probe, name)
    except _Refused as exc:
        return f"refused: {exc}"
    return f"exported in {time.perf_counter() - start:.1f} s ({path.name})"


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
    with training_mode(model, False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings: a data-dependent forward shows up in the check
        torch.onnx.export(PrefixModule(model, stubs[-1]), (x,), buffer, dynamo=False, opset_version=OPSET,
                          input_names=["images"], output_names=["features"],
                          dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
    return buffer.getvalue()


def export_key(model: nn.Module, stubs: list[str], probe: torch.Tensor, name: str = "") -> str:
    """Everything that changes the exported graph: the model's name and class, the prefix cut, its modules'
    structure and a digest of their weights, the input's non-batch shape, and the library versions."""
    from importlib import metadata  # not `import onnx`: it takes ~0.6 s, and only an export needs it

    h = hashlib.sha256()
    for part in (name, type(model).__qualname__, *stubs, str(tuple(probe.shape[1:])), str(probe.dtype),
                 torch.__version__, metadata.version("onnx"), metadata.version("onnxruntime"), str(OPSET)):
        h.update(part.encode() + b"\0")
    h.update(weights_digest(model, stubs).encode())
    return f"{(name or type(model).__name__)[:40]}-{h.hexdigest()[:20]}"


@torch.no_grad()
def weights_digest(model: nn.Module, stubs: list[str]) -> str:
    """sha256 of the prefix modules' structure (their repr: layer types, shapes, activations) and state."""
    h = hashlib.sha256()
    for stub in stubs:
        module = model.get_submodule(stub)
        h.update(repr(module).encode())
        for key, value in module.state_dict().items():
            h.update(key.encode())
            h.update(value.detach().to("cpu", copy=True).contiguous().numpy().tobytes())
    return h.hexdigest()


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: how far `a` is from the reference `b`, on `b`'s scale."""
    if a.shape != b.shape:
        return float("inf")
    scale = float(b.abs().max()) if b.numel() else 0.0
    return float((a.float() - b.float()).abs().max()) / max(scale, 1e-12) if b.numel() else 0.0


def exports_dir() -> Path:
    from vislab import _paths as paths

    return paths.work_dir() / paths.ENGINE_EXPORTS


def _unavailable(device: torch.device) -> tuple[str, list[str]]:
    """('', providers) when onnxruntime can run on `device`, else (why not, [])."""
    import importlib.util

    try:
        import onnxruntime
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
    import onnxruntime

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
    from vislab import _fileio as fileio

    try:
        record = fileio.read_json(path, {})
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(path: Path, record: dict) -> None:
    from vislab import _fileio as fileio

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
