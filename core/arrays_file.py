"""Reference arrays stored in an artifact folder (the golden file, the held-out reference):
one `.npz` of named arrays plus a JSON `meta` entry, written atomically and read without
pickle. Torch-free."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from scredge.artifact import atomic_write
from scredge.errors import ScredgeError

META = "meta"  # the array holding the JSON metadata as UTF-8 bytes


def save_arrays(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` and `meta` to `path` atomically (a reader never sees half a file)."""
    if META in arrays:
        raise ValueError(f"'{META}' is reserved for the metadata")
    payload = {META: np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: np.savez_compressed(tmp, **payload))


@contextmanager
def open_arrays(path: Path, what: str, fix: str) -> Iterator[tuple[dict, np.lib.npyio.NpzFile]]:
    """(meta, arrays) of a file written by `save_arrays`. Anything unreadable, a missing
    array or metadata key included, is a ScredgeError naming `what` and `fix`; pickled
    arrays are never loaded."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            meta = json.loads(arrays[META].tobytes())
            if not isinstance(meta, dict):
                raise TypeError(f"metadata is a {type(meta).__name__}, not an object")
            yield meta, arrays
    except ScredgeError:
        raise
    except (OSError, ValueError, KeyError, TypeError, IndexError, RecursionError,
            zipfile.BadZipFile) as exc:
        raise ScredgeError(f"the {what} is unreadable",
                           received=f"{path}: {type(exc).__name__}: {exc}"[:300],
                           fix=fix) from exc
