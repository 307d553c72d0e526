"""Writing an artifact's weights one tensor at a time (issue 27).

The graph (export/stamp.py) carries each weight as a `Recipe`; here every weight is made
from the reference model's parameter (a view of the memory-mapped source file when the
model came from a Hugging Face folder) in row chunks, appended to `model.onnx.data` at a
page-aligned offset, and its source pages handed back before the next one. The graph
itself, a few MB of nodes, is saved last with `onnx.save_model`, pointing at the data.
The reference checkpoint (model.safetensors) is streamed the same way. No step holds a
second copy of the weights; a progress bar on stderr follows each long step.
"""

from __future__ import annotations

import json
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from scredge.deps import require
from scredge.export.stamp import _DEDUP_LIMIT, Recipe, StampedGraph

ALIGN = 4096  # page-aligned tensors: onnxruntime can map them rather than copy them
CHUNK_BYTES = 64 << 20


class Progress:
    """`label  [#####.....]  312/540 MiB  4.1 s` on stderr, redrawn in place on a terminal,
    a line per quarter otherwise."""

    def __init__(self, label: str, total: int, unit: str = "MiB", scale: float = 2**20):
        self.label, self.total, self.unit, self.scale = label, max(total, 1), unit, scale
        self.done, self.t0, self.tty = 0, time.perf_counter(), sys.stderr.isatty()
        self._quarter = -1

    def update(self, n: int) -> None:
        self.done += n
        frac = min(1.0, self.done / self.total)
        if self.tty:
            sys.stderr.write("\r" + self._line(frac))
            sys.stderr.flush()
        elif int(frac * 4) > self._quarter:
            self._quarter = int(frac * 4)
            print(self._line(frac), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\r" + self._line(1.0) + "\n")
            sys.stderr.flush()

    def _line(self, frac: float) -> str:
        bar = "#" * int(frac * 24) + "." * (24 - int(frac * 24))
        took = time.perf_counter() - self.t0
        return (f"  {self.label:<22} [{bar}] {self.done / self.scale:7.0f}/"
                f"{self.total / self.scale:.0f} {self.unit}  {took:5.1f} s")


def trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc), so what one step freed
    does not stay resident under the next step's peak."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def release_of(model):
    """The model's `mapped_weights.release` (scredge.ref.mapped: hands a tensor's source
    pages back), or a no-op for a model whose weights are ordinary tensors."""
    mapped = getattr(model, "mapped_weights", None)
    return (lambda name: None) if mapped is None else mapped.release


def _source(params: dict, name: str) -> np.ndarray:
    return params[name].detach().numpy()


def recipe_chunks(r: Recipe, params: dict) -> Iterator[np.ndarray]:
    """The initializer `r` describes, as C-ordered row chunks of its final layout."""
    w = _source(params, r.param)
    if r.transform in ("fold_w", "fold_b"):
        yield _folded(r, params)
        return
    if r.transform == "T":
        step = max(1, CHUNK_BYTES // max(1, w.shape[0] * w.itemsize))
        for c0 in range(0, w.shape[1], step):
            yield np.ascontiguousarray(w[:, c0:c0 + step].T.astype(r.dtype, copy=False))
        return
    if r.transform == "h":  # rounded through float16 (stamp.Recipe)
        w = w.astype(np.float16)
    rows = w.reshape(w.shape[0], -1) if w.ndim > 1 else w.reshape(1, -1)
    step = max(1, CHUNK_BYTES // max(1, rows.shape[1] * w.itemsize))
    for r0 in range(0, rows.shape[0], step):
        yield np.ascontiguousarray(rows[r0:r0 + step].astype(r.dtype, copy=False))


def _folded(r: Recipe, params: dict) -> np.ndarray:
    """export/fold_scale.py's product: graph-dtype values times the graph-dtype scale, in
    float32, cast back."""
    scale = _source(params, r.param.rsplit(".proj.", 1)[0] + ".scale").astype(r.dtype)
    w = _source(params, r.param).astype(r.dtype)
    values = w.T if r.transform == "fold_w" else w
    product = values.astype(np.float32) * scale.astype(np.float32)
    return np.ascontiguousarray(product.astype(r.dtype))


def recipe_value(r: Recipe, params: dict) -> np.ndarray:
    return np.concatenate([c.ravel() for c in recipe_chunks(r, params)])


def dedup_small(stamped: StampedGraph, params: dict) -> int:
    """Small weights of equal value become one initializer, as the exporter's optimizer
    (onnx_ir DeduplicateInitializersPass, at most 1024 elements) does in a full trace."""
    g = stamped.proto.graph
    first: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    for init in g.initializer:
        r = stamped.recipes.get(init.name)
        if r is None or int(np.prod(list(init.dims))) > _DEDUP_LIMIT:
            continue
        v = recipe_value(r, params)
        key = (v.dtype.str, tuple(init.dims), v.tobytes())
        if key in first:
            alias[init.name] = first[key]
        else:
            first[key] = init.name
    if not alias:
        return 0
    for n in g.node:
        for k, x in enumerate(n.input):
            n.input[k] = alias.get(x, x)
    keep = [i for i in g.initializer if i.name not in alias]
    del g.initializer[:]
    g.initializer.extend(keep)
    vi = [v for v in g.value_info if v.name not in alias]
    del g.value_info[:]
    g.value_info.extend(vi)
    for name in alias:
        del stamped.recipes[name]
    return len(alias)


def set_external(init, location: str, offset: int, length: int) -> None:
    """Point initializer `init` at `length` bytes at `offset` of the file `location` (its
    own values, if any, dropped)."""
    onnx = require("onnx")
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
                  "uint64_data"):
        init.ClearField(field)
    del init.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)),
                       ("length", str(length))):
        entry = init.external_data.add()
        entry.key, entry.value = key, value
    init.data_location = onnx.TensorProto.EXTERNAL


def write_onnx(stamped: StampedGraph, params: dict, onnx_path: Path, data_name: str,
               release=lambda name: None) -> dict:
    """Every weight of `stamped` into `data_name` beside `onnx_path`, one at a time (the
    gaps that align them written as zeros), then the graph; returns the data file's
    manifest entry (sha256 and bytes, hashed as it was written: scredge.artifact)."""
    onnx = require("onnx")
    g = stamped.proto.graph
    todo = [i for i in g.initializer if i.name in stamped.recipes]
    total = sum(int(np.prod(list(i.dims))) * np.dtype(stamped.recipes[i.name].dtype).itemsize
                for i in todo)
    bar = Progress("writing weights", total)
    offset = 0
    with HashedFile(onnx_path.parent / data_name) as f:
        for init in todo:
            r = stamped.recipes[init.name]
            f.write(bytes(-offset % ALIGN))
            offset += -offset % ALIGN
            length = 0
            for chunk in recipe_chunks(r, params):
                f.write(chunk.data)
                length += chunk.nbytes
                bar.update(chunk.nbytes)
            set_external(init, data_name, offset, length)
            offset += length
            f.settle()  # hashed: its source pages can go
            release(r.param)
    bar.close()
    onnx.save_model(stamped.proto, str(onnx_path))
    return f.entry()


class HashedFile:
    """A file written in order and hashed as it is written (sha256, in a worker thread:
    hashlib lets go of the GIL on large buffers, so hashing overlaps the next write; with
    `threaded` False, in this thread: one core, the other left to the trace's child);
    `path` None: hashed only, nothing written. `entry()`: the manifest entry."""

    def __init__(self, path: Path | None, threaded: bool = True) -> None:
        import hashlib
        from concurrent.futures import ThreadPoolExecutor

        self.path, self.size = path, 0
        self._hash = hashlib.sha256()
        self._pool = ThreadPoolExecutor(1) if threaded else None
        self._pending = None
        self._f = None if path is None else open(path, "wb")

    def __enter__(self) -> HashedFile:
        return self

    def __exit__(self, *exc) -> None:
        self.settle()
        if self._pool is not None:
            self._pool.shutdown()
        if self._f is not None:
            self._f.close()

    def settle(self) -> None:
        """Wait until what was written is hashed."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def write(self, data) -> None:
        data = memoryview(data).cast("B")
        self.settle()  # one buffer in flight: the caller may reuse the one before
        if self._pool is None:
            self._hash.update(data)
        else:
            self._pending = self._pool.submit(self._hash.update, data)
        if self._f is not None:
            self._f.write(data)
        self.size += data.nbytes

    def entry(self) -> dict:
        self.settle()
        return {"sha256": self._hash.hexdigest(), "bytes": self.size}


_ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}


def write_safetensors(params: dict, path: Path | None, metadata: dict[str, str],
                      release=lambda name: None, threaded: bool = True) -> dict:
    """A safetensors file of `params` (torch tensors), header first, then each tensor's
    bytes in turn (the format of safetensors.torch.save_file, with sorted names); returns
    its manifest entry (sha256, bytes). `path` None: the file's hash only, nothing written
    (the reference weights a slim folder names but does not keep)."""
    names = sorted(params)
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name in names:
        t = params[name]
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[np.dtype(str(t.dtype).removeprefix("torch."))],
                        "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    bar = Progress("writing reference" if path is not None else "hashing reference", offset)
    with HashedFile(path, threaded) as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in names:
            a = params[name].detach().contiguous().numpy()
            f.write(a.data if a.ndim else a.tobytes())
            bar.update(a.nbytes)
            f.settle()
            release(name)
    bar.close()
    return f.entry()
