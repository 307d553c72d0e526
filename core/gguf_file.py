"""A GGUF file's header checked before the `gguf` library parses it (issue 30, class 3).

llama.cpp's Python reader walks every element a header claims, one Python call each, and
sizes its arrays from the header's counts: a metadata array of 2**40 elements is a hang,
a count of 2**62 an overflow, not an error. This walk reads the header only (the magic,
version 2 or 3, the metadata and the tensor index) and checks every count and length
against the bytes left in the file before it moves past them (an element takes at least
its own size, a string at least its 8-byte length), array nesting, and each tensor's
dimensions; the reader then parses a header known to fit the file. Torch-free.
"""

from __future__ import annotations

import struct
from pathlib import Path

from scredge.errors import ScredgeError

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)  # u64 counts and lengths (version 1 had u32 ones)
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_MAX_ARRAY_NESTING = 2  # llama.cpp writes flat arrays; a nested one is data, not a bomb
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MIN_BITS_PER_ELEMENT = 1  # no GGML type packs an element in under one bit (IQ1: 1.56)


class _Header:
    """Sequential reads of a header, each bounded by the bytes left in the file."""

    def __init__(self, f, size: int, path: Path) -> None:
        self.f, self.size, self.path, self.pos = f, size, path, 0

    def bad(self, what: str) -> ScredgeError:
        return ScredgeError("not a readable GGUF file (truncated or corrupt?)",
                            received=f"{self.path}: {what} (at byte {self.pos} of "
                                     f"{self.size})",
                            expected="a whole GGUF v2/v3 file",
                            fix="download or convert the file again")

    def take(self, n: int, what: str) -> bytes:
        if n > self.size - self.pos:
            raise self.bad(f"{what} of {n} bytes runs past the end of the file")
        data = self.f.read(n)
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.bad(f"{what} of {n} bytes runs past the end of the file")
        self.pos += n
        self.f.seek(self.pos)

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def count(self, what: str, each: int) -> int:
        """A u64 count of items taking at least `each` bytes apiece, bounded by the file."""
        n = self.u64(what)
        if n * each > self.size - self.pos:
            raise self.bad(f"{what} {n} cannot fit in the {self.size - self.pos} bytes left")
        return n

    def string(self, what: str) -> None:
        self.skip(self.u64(f"{what} length"), what)

    def value(self, vtype: int, what: str, nesting: int = 0) -> None:
        if vtype in _SCALAR_BYTES:
            self.skip(_SCALAR_BYTES[vtype], what)
        elif vtype == _STRING:
            self.string(what)
        elif vtype == _ARRAY:
            if nesting >= _MAX_ARRAY_NESTING:
                raise self.bad(f"{what}: arrays nested deeper than {_MAX_ARRAY_NESTING}")
            itype = self.u32(f"{what} element type")
            each = _SCALAR_BYTES.get(itype, 8 if itype == _STRING else 12)
            n = self.count(f"{what} element count", each)
            if itype in _SCALAR_BYTES:
                self.skip(n * each, what)
            else:
                for _ in range(n):  # strings / arrays: each one's length is in the file
                    self.value(itype, what, nesting + 1)
        else:
            raise self.bad(f"{what}: unknown value type {vtype}")


def check_gguf_header(path: str | Path) -> None:
    """Refuse a GGUF file whose header does not fit the file (see the module doc)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        h = _Header(f, size, path)
        if h.take(min(4, size), "the magic") != GGUF_MAGIC:
            raise h.bad("no GGUF magic")
        version = h.u32("the version")
        if version not in GGUF_VERSIONS:
            raise h.bad(f"version {version}, not one of {list(GGUF_VERSIONS)}")
        tensors = h.u64("the tensor count")
        kvs = h.count("the metadata count", 8 + 4 + 1)  # key length, type, a byte
        if tensors * (8 + 4 + 8 + 4 + 8) > size:  # name length, dims, one dim, type, offset
            raise h.bad(f"the tensor count {tensors} cannot fit in the file")
        for i in range(kvs):
            h.string(f"metadata key {i}")
            h.value(h.u32(f"metadata {i} type"), f"metadata {i}")
        for i in range(tensors):
            h.string(f"tensor {i} name")
            dims = h.u32(f"tensor {i} dimension count")
            if not 1 <= dims <= _MAX_DIMS:
                raise h.bad(f"tensor {i} has {dims} dimensions, not 1..{_MAX_DIMS}")
            elements = 1
            for d in range(dims):
                elements *= h.u64(f"tensor {i} dimension {d}")
            if elements * _MIN_BITS_PER_ELEMENT > 8 * size:
                raise h.bad(f"tensor {i} claims {elements} elements, more than the file "
                            "can hold")
            h.skip(4 + 8, f"tensor {i} type and offset")
