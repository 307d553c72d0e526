"""Reference arrays stored in an artifact folder (the golden file, the held-out reference):
one `.npz` of named arrays plus a JSON `meta` entry, written atomically and read without
pickle. Torch-free."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from scredge.destination import atomic_write
from scredge.errors import ScredgeError
from scredge.limits import MAX_ARRAY_BYTES, MAX_JSON_BYTES

META = "meta"  # the array holding the JSON metadata as UTF-8 bytes


def save_arrays(path: Path, meta: dict, arrays: dict[str, np.ndarray],
                deflate: bool = False) -> None:
    """Write `arrays` and `meta` to `path` atomically (a reader never sees half a file);
    `deflate` for arrays zlib shrinks (token ids, small integers), not for float logits."""
    if META in arrays:
        raise ValueError(f"'{META}' is reserved for the metadata")
    payload = {META: np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays}
    path.parent.mkdir(parents=True, exist_ok=True)
    # stored, not deflated: logits and hidden states are float noise to zlib, which spent
    # 1.5 s of CPU on SmolLM2's golden to make it 8 % smaller (49 MB instead of 53)
    save = np.savez_compressed if deflate else np.savez
    atomic_write(path, lambda tmp: save(tmp, **payload))


class CheckedArrays:
    """An open .npz whose arrays are read only after their header is checked against the
    bytes the file holds for them: no object arrays, at most MAX_ARRAY_BYTES, and a shape
    whose size is the stored data's (a lying header never gets numpy to allocate what it
    claims)."""

    def __init__(self, npz: np.lib.npyio.NpzFile) -> None:
        self._npz = npz

    def __contains__(self, name: str) -> bool:
        return name in self._npz.files

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._npz.files:
            raise KeyError(f"no array named {name!r}")
        info = self._npz.zip.getinfo(f"{name}.npy")
        with self._npz.zip.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"array {name!r} has npy format {version}")
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read(f)
            header = f.tell()
        if dtype.hasobject:
            raise ValueError(f"array {name!r} holds Python objects")
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if nbytes > MAX_ARRAY_BYTES or nbytes != info.file_size - header:
            raise ValueError(f"array {name!r}: header says {list(shape)} {dtype} ({nbytes} "
                             f"bytes), the file holds {info.file_size - header} bytes "
                             f"(at most {MAX_ARRAY_BYTES})")
        return self._npz[name]


def check_array(z: CheckedArrays, name: str, ndim: int, kind: str,
                bounds: tuple[int, int] | None = None) -> np.ndarray:
    """Array `name` of `ndim` dimensions and dtype kind `kind` ('i' integer, 'f' float), its
    values in [lo, hi) when `bounds` is given; ValueError otherwise (open_arrays names the
    file)."""
    a = z[name]
    if a.ndim != ndim or a.dtype.kind not in (kind if kind != "i" else "iu"):
        raise ValueError(f"array {name!r} is {a.ndim}-d {a.dtype}, expected {ndim}-d "
                         f"{'integer' if kind == 'i' else 'float'}")
    if bounds is not None and a.size and not (bounds[0] <= a.min() and a.max() < bounds[1]):
        raise ValueError(f"array {name!r} holds values outside {bounds[0]}..{bounds[1] - 1}")
    return a


@contextmanager
def open_arrays(path: Path, what: str, fix: str,
                data: bytes | None = None) -> Iterator[tuple[dict, CheckedArrays]]:
    """(meta, arrays) of a file written by `save_arrays`: `data`, its bytes already read
    and verified (artifact.read_listed_bytes), else read from `path`. Anything unreadable,
    a missing array or metadata key, a malformed or oversized array included, is a
    ScredgeError naming `what` and `fix`; pickled arrays are never loaded."""
    try:
        with np.load(path if data is None else io.BytesIO(data), allow_pickle=False) as npz:
            arrays = CheckedArrays(npz)
            raw = arrays[META]
            if raw.nbytes > MAX_JSON_BYTES:
                raise ValueError(f"metadata of {raw.nbytes} bytes")
            meta = json.loads(raw.tobytes())
            if not isinstance(meta, dict):
                raise TypeError(f"metadata is a {type(meta).__name__}, not an object")
            yield meta, arrays
    except ScredgeError:
        raise
    except (OSError, ValueError, KeyError, TypeError, IndexError, RecursionError,
            OverflowError, EOFError, zipfile.BadZipFile) as exc:
        raise ScredgeError(f"the {what} is unreadable",
                           received=f"{path}: {type(exc).__name__}: {exc}"[:300],
                           fix=fix) from exc
