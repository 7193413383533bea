"""GGUF files as plain data: the metadata and the float tensors, read with the `gguf` package (llama.cpp's
own reader), shapes in numpy / torch order (GGUF stores ggml's `ne`, fastest-varying first: reversed).

Only unquantized tensors (F32, F16) are read; a quantized one is refused with its type, since turning it
back into floats is a job for ggml, not for this lab.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader

FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16)


def read_gguf(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, tensors) of a GGUF (v2/v3) file: {key: value} without the reader's own `GGUF.*` entries,
    and {name: array} in torch order, copied out of the file."""
    try:
        reader = GGUFReader(Path(path))
    except ValueError as exc:  # bad magic, unsupported version, truncated
        raise ValueError(f"{path} is not a readable GGUF file ({exc})") from None
    meta = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    tensors = {}
    for t in reader.tensors:
        if t.tensor_type not in FLOAT_TYPES:
            raise ValueError(f"GGUF tensor {t.name}: unsupported ggml type {t.tensor_type.name}")
        tensors[t.name] = np.array(t.data)  # the reader already gives the torch order (reversed ne)
    return meta, tensors
