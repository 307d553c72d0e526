"""A safetensors file's header, checked against the file itself before the safetensors
library (or anything else) allocates for it: a corrupt or lying header (a huge header
length, offsets past the end, a shape that does not match its bytes, a truncated file) is a
ScredgeError naming the file, not a traceback or an allocation of the size it claims.

The format (safetensors' own documentation): 8 bytes little-endian N, then N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
then the data, offsets relative to its start.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.files import parse_json
from scredge.limits import MAX_SAFETENSORS_HEADER_BYTES, MAX_SAFETENSORS_TENSORS

DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8,
               "F64": 8}
_FIX = "re-save the weights (safetensors.torch.save_file or save_pretrained)"


def check_safetensors(path: str | Path) -> dict:
    """The file's header (tensor entries and `__metadata__`), every entry checked against
    the file's size; ScredgeError for anything else."""
    path = Path(path)

    def bad(what: str, received: object, expected: str | None = None) -> ScredgeError:
        return ScredgeError(f"{path.name} is not a readable safetensors file: {what}",
                            received=f"{path}: {received}"[:300], expected=expected, fix=_FIX)

    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise bad("too short", f"{size} bytes", "at least an 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_SAFETENSORS_HEADER_BYTES, size - 8):
                raise bad("its header length is past the end of the file or too large",
                          f"header of {n} bytes in a file of {size}",
                          f"at most {min(MAX_SAFETENSORS_HEADER_BYTES, size - 8)} bytes")
            raw = f.read(n)
    except OSError as exc:
        raise ScredgeError("cannot read the safetensors file",
                           received=f"{path}: {exc.strerror or exc}") from exc
    header = parse_json(raw, str(path), f"{path.name}'s safetensors header", _FIX,
                        expected="a JSON object of tensor entries")
    if not isinstance(header, dict) or len(header) > MAX_SAFETENSORS_TENSORS + 1:
        raise bad("its header is not an object of tensor entries", type(header).__name__)
    _check_entries(header, size - 8 - n, bad)
    return header


def _check_entries(header: dict, data_bytes: int, bad) -> None:
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise bad("__metadata__ is not an object of strings", repr(meta)[:100])
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise bad(f"tensor '{name}' has no entry", repr(entry)[:100])
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get(
            "data_offsets")
        if dtype not in DTYPE_BYTES:
            raise bad(f"tensor '{name}' has an unknown dtype", repr(dtype)[:40],
                      f"one of {sorted(DTYPE_BYTES)}")
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise bad(f"tensor '{name}' has a malformed shape", repr(shape)[:100],
                      "a list of integers >= 0")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(
                isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_bytes):
            raise bad(f"tensor '{name}' has offsets outside the file", repr(offsets)[:100],
                      f"[begin, end] within the {data_bytes} bytes of data")
        need = math.prod(shape) * DTYPE_BYTES[dtype]
        if offsets[1] - offsets[0] != need:
            raise bad(f"tensor '{name}' does not fit its bytes",
                      f"shape {shape} {dtype} needs {need} bytes, offsets give "
                      f"{offsets[1] - offsets[0]}")


def load_safetensors(path: str | Path) -> dict:
    """Every tensor of a safetensors file as torch tensors, the header checked first."""
    st = require("safetensors.torch")
    check_safetensors(path)
    try:
        return st.load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors' SafetensorError and OSError
        raise ScredgeError("the safetensors library cannot read the file",
                           received=f"{path}: {exc}"[:300], fix=_FIX) from exc
