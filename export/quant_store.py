"""The weights of a quantized export, one tensor at a time (issue 27).

The float graph is stamped and its weights streamed to `model.onnx.data` as for a float
export (export/stamp.py, export/stream_write.py); a quantized export then reads that graph
without its data (`FloatSource.open`: a few MB of nodes whose initializers point into the
file, renamed to `SOURCE_FILE`) and reads each weight only when it quantizes that matrix
(`read`), so the float graph is never held whole. A tied head is a view of the embedding's
bytes read transposed, never a second copy.

`TensorStore.save` writes a planned graph with every initializer over `INLINE_BYTES`
external, page-aligned, in the graph's own data file (`model.onnx.data`,
`model.trt.onnx.data`), copied from the source in row chunks for float ones. A float tensor
that an earlier graph of the folder already holds (`share`: the norms, a float embedding
both forms keep) is not written again: the later graph points at the earlier graph's file
(SCR_SPEC v3 section 4, weights never stored twice in one folder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scredge.deps import require
from scredge.export.stream_write import ALIGN, CHUNK_BYTES, set_external

SOURCE_FILE = ".float-source.data"  # the float graph's data while a quantized export runs
# where a planned graph's quantized tensors are while it is built: numpy arrays beside the
# graph (FloatSource.held), not bytes inside it. protobuf (upb) keeps every byte ever put in
# a message until the whole message goes, so tensors rewritten by the passes after the
# quantizer (the packed q/k/v, the TensorRT form's) would all stay resident together
HELD = ".held-in-memory"
INLINE_BYTES = 1024  # smaller initializers stay in the graph (shape constants, scalars)
# page-aligned tensors can be mapped by onnxruntime rather than copied; quantized ones are
# repacked by their kernels anyway, so only large float ones are worth the padding (a page
# per tensor would add ~1 MB to a 135M model's int4 graph)
PAGE_ALIGNED_BYTES = 1 << 20
SMALL_ALIGN = 64


def _external(init) -> dict[str, str] | None:
    onnx = require("onnx")
    if init.data_location != onnx.TensorProto.EXTERNAL:
        return None
    return {e.key: e.value for e in init.external_data}


def _nbytes(init) -> int:
    ext = _external(init)
    return int(ext["length"]) if ext is not None else len(init.raw_data)


@dataclass
class FloatSource:
    """The float graph's initializers, read one at a time from its data file."""

    folder: Path
    transposed: dict[str, str]  # a tied head's [D, V] initializer -> the embedding's
    held: dict[str, np.ndarray] = field(default_factory=dict)  # name -> bytes (HELD)

    @classmethod
    def open(cls, folder: Path, onnx_file: str, data_file: str):
        """(the float graph without its weights, its source): `data_file` is renamed to
        SOURCE_FILE and the graph's initializers point there. A graph saved whole (no data
        file) is loaded whole."""
        onnx = require("onnx")
        path = folder / onnx_file
        if not (folder / data_file).is_file():
            return onnx.load(str(path)), cls(folder, {})
        proto = onnx.load(str(path), load_external_data=False)
        os.replace(folder / data_file, folder / SOURCE_FILE)
        path.unlink()
        for init in proto.graph.initializer:
            ext = _external(init)
            if ext is not None:
                set_external(init, SOURCE_FILE, int(ext.get("offset", 0)),
                              int(ext["length"]))
        return proto, cls(folder, {})

    def is_lazy(self, init) -> bool:
        ext = _external(init)
        return ext is not None and ext["location"] == SOURCE_FILE

    def is_held(self, init) -> bool:
        ext = _external(init)
        return ext is not None and ext["location"] == HELD

    def hold(self, array: np.ndarray, name: str, data_type: int | None = None,
             dims: list[int] | None = None):
        """An initializer `name` whose value is `array`, kept in `held` rather than in the
        graph (small ones inline); `data_type` / `dims` when `array` is the raw bytes of
        another type (INT4 two to a byte)."""
        onnx = require("onnx")
        if data_type is None and array.nbytes <= INLINE_BYTES:
            return onnx.numpy_helper.from_array(array, name)
        init = onnx.TensorProto(name=name, dims=list(array.shape if dims is None else dims),
                                data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
                                if data_type is None else data_type)
        self.held[name] = np.ascontiguousarray(array)
        set_external(init, HELD, 0, self.held[name].nbytes)
        return init

    def tie_head(self, proto, table, name: str) -> None:
        """The tied head's [D, V] initializer `name`: the embedding `table`'s bytes, read
        transposed (materialize_tied_head for a graph whose weights are not loaded)."""
        onnx = require("onnx")
        if not self.is_lazy(table):
            proto.graph.initializer.append(onnx.numpy_helper.from_array(
                np.ascontiguousarray(self.read(table).T), name))
            return
        init = onnx.TensorProto(name=name, data_type=table.data_type,
                                dims=list(reversed(table.dims)))
        ext = _external(table)
        set_external(init, SOURCE_FILE, int(ext["offset"]), int(ext["length"]))
        proto.graph.initializer.append(init)
        self.transposed[name] = table.name

    def check(self, proto) -> None:
        """onnx's checker on `proto`, its initializers still in the source (checked when
        the float graph was written; the checker would look for their file in the working
        folder) standing as graph inputs of their type and shape meanwhile. Done in place
        (those initializers are a few bytes each), not on a copy of the graph."""
        onnx = require("onnx")
        g = proto.graph
        lazy = [k for k, init in enumerate(g.initializer)
                if self.is_lazy(init) or self.is_held(init)]
        held = [onnx.TensorProto() for _ in lazy]
        for k, copy in zip(lazy, held):
            copy.CopyFrom(g.initializer[k])
        for k in reversed(lazy):
            del g.initializer[k]
        inputs = len(g.input)
        g.input.extend(onnx.helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
                       for i in held)
        try:
            onnx.checker.check_model(proto)
        finally:
            del g.input[inputs:]
            g.initializer.extend(held)

    def read(self, init) -> np.ndarray:
        """The value of `init` (a float graph initializer), from the source when lazy."""
        numpy_helper = require("onnx").numpy_helper
        if self.is_held(init):
            return self.held[init.name]
        if not self.is_lazy(init):
            return numpy_helper.to_array(init)
        ext = _external(init)
        dtype = require("onnx").helper.tensor_dtype_to_np_dtype(init.data_type)
        dims = list(init.dims)
        if init.name in self.transposed:
            dims = dims[::-1]
        count = int(np.prod(dims)) if dims else 1
        a = np.fromfile(self.folder / SOURCE_FILE, dtype=dtype, count=count,
                        offset=int(ext["offset"])).reshape(dims)
        return np.ascontiguousarray(a.T) if init.name in self.transposed else a

    def chunks(self, init):
        """`read(init)`'s bytes in row chunks of about CHUNK_BYTES (a transposed head
        whole: it is the one matrix read so)."""
        if self.is_held(init):
            yield memoryview(self.held[init.name]).cast("B")
            return
        if init.name in self.transposed or not self.is_lazy(init):
            yield self.read(init).tobytes()
            return
        ext = _external(init)
        start, length = int(ext["offset"]), int(ext["length"])
        with open(self.folder / SOURCE_FILE, "rb") as f:
            f.seek(start)
            for done in range(0, length, CHUNK_BYTES):
                yield f.read(min(CHUNK_BYTES, length - done))

    def close(self) -> None:
        (self.folder / SOURCE_FILE).unlink(missing_ok=True)


class TensorStore:
    """Saves planned graphs beside the source, each with its own data file; float tensors
    an earlier (shared) graph holds are referenced there, not written again."""

    def __init__(self, source: FloatSource):
        self.source = source
        self.shared: dict[str, tuple[str, int, int]] = {}  # float name -> file, offset, len
        self._written: dict[str, dict[str, tuple[str, int, int]]] = {}

    def save(self, proto, path: Path) -> None:
        """`proto` to `path`, its initializers over INLINE_BYTES in `path.name + '.data'`
        (written to a temporary name, then renamed: a graph a session still maps is not
        changed under it). `proto`'s initializers are made external in place."""
        onnx = require("onnx")
        data_name = path.name + ".data"
        tmp = path.with_name(f".{data_name}.tmp")
        floats: dict[str, tuple[str, int, int]] = {}
        offset = 0
        with open(tmp, "wb") as f:
            for init in proto.graph.initializer:
                lazy, held = self.source.is_lazy(init), self.source.is_held(init)
                if lazy and init.name in self.shared:
                    set_external(init, *self.shared[init.name])
                    continue
                if not (lazy or held) and (_external(init) is not None
                                           or len(init.raw_data) <= INLINE_BYTES):
                    continue
                size = _nbytes(init)
                align = ALIGN if lazy and size >= PAGE_ALIGNED_BYTES else SMALL_ALIGN
                offset = (offset + align - 1) // align * align
                f.seek(offset)
                length = 0
                for chunk in (self.source.chunks(init) if lazy or held else (init.raw_data,)):
                    f.write(chunk)
                    length += len(chunk)
                set_external(init, data_name, offset, length)
                if lazy:
                    floats[init.name] = (data_name, offset, length)
                offset += length
        if offset:
            os.replace(tmp, path.parent / data_name)
        else:
            tmp.unlink()
            (path.parent / data_name).unlink(missing_ok=True)
        self.source.held.clear()  # in the file now (or not in the graph: dropped)
        onnx.save_model(proto, str(path))
        self._written[path.name] = floats

    def share(self, path: Path) -> None:
        """The float tensors of the graph last saved at `path` (final now) are shared with
        the graphs saved after it."""
        for name, where in self._written.get(path.name, {}).items():
            self.shared.setdefault(name, where)
