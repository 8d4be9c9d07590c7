"""The one reader of safetensors headers: names, shapes, dtypes and metadata, no tensor read, no torch.

A safetensors file is an 8-byte little-endian header length, a JSON header
(``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {str: str}}``) and the tensor bytes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from videodiff.errors import UserError

MAX_HEADER = 100 << 20  # the safetensors library's own limit
# safetensors dtype codes -> the names torch gives them (``str(dtype)`` without ``torch.``)
DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "BOOL": "bool",
}  # fmt: skip


@dataclass(frozen=True)
class Header:
    """What a safetensors header says, tensors by name in sorted order (as ``safe_open(...).keys()``)."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)  # torch's names: "float16", "int64", ...
    metadata: dict[str, str] = field(default_factory=dict)  # the free-form ``__metadata__`` strings


def read_header(path: str | Path) -> Header:
    """Read ``path``'s header; a missing, malformed, oversized or truncated file is a one-line :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not a regular file" if path.exists() else f"{path}: no such file")
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            raw = fh.read(8)
            (n,) = struct.unpack("<Q", raw) if len(raw) == 8 else (-1,)
            if not 0 < n <= min(size - 8, MAX_HEADER):
                raise ValueError("bad header size")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ValueError("__metadata__ is not a map of strings")
        names = sorted(header)
        shapes = {k: tuple(int(x) for x in header[k]["shape"]) for k in names}
        dtypes = {k: DTYPES.get(header[k]["dtype"], header[k]["dtype"].lower()) for k in names}
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    except RecursionError:  # a header of 100,000 nested lists: json's parser recurses per level
        raise UserError(f"{path}: not a readable safetensors file (its header is nested too deeply)") from None
    except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({str(exc)[:200]})") from None
    if 8 + n + end > size:
        raise UserError(f"{path}: not a readable safetensors file (truncated: {size} of {8 + n + end} bytes)")
    return Header(shapes, dtypes, dict(metadata))
