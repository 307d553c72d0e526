"""Safetensors files as memory-mapped tensors: the reference model's weights share the file's
pages instead of holding a copy (a 6 GB model costs no 6 GB of heap), and the pages a step
has read can be handed back (`release`) so the process's resident memory falls again.

The format is read here rather than through `safetensors.torch.load_file`, which copies
every tensor into memory: an 8-byte little-endian header length, a JSON header of
`{name: {dtype, shape, data_offsets}}`, then the bytes. Mappings are copy-on-write: the
tensors are writable (training a model loaded this way copies only the pages it changes)
and the file itself is never written.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import torch

from scredge.errors import ScredgeError
from scredge.safetensors_file import check_safetensors

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "I8": torch.int8,
           "U8": torch.uint8, "BOOL": torch.bool}


class MappedSafetensors:
    """The tensors of one or more safetensors files, each a view of its file's pages."""

    def __init__(self, paths: list[Path]) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.metadata: dict[str, str] = {}
        self._spans: dict[str, tuple[mmap.mmap, int, int]] = {}
        self._maps: list[mmap.mmap] = []
        for path in paths:
            self._open(Path(path))

    def _open(self, path: Path) -> None:
        try:
            with open(path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as exc:
            raise ScredgeError("cannot read the safetensors file", received=f"{path}: {exc}",
                               fix="check the file is complete and readable") from exc
        self._maps.append(mm)
        header = check_safetensors(path)  # the one header check (core/safetensors_file.py)
        start = 8 + int.from_bytes(mm[:8], "little")
        buf = np.frombuffer(mm, dtype=np.uint8)
        for name, info in header.items():
            if name == "__metadata__":
                self.metadata.update(info or {})
                continue
            dtype = _DTYPES.get(info.get("dtype"))
            lo, hi = info.get("data_offsets", (0, -1))
            shape = tuple(info.get("shape", ()))
            n = int(np.prod(shape, dtype=np.int64))
            if dtype is None or hi - lo != n * dtype.itemsize or start + hi > len(mm):
                raise ScredgeError("a safetensors file is truncated or corrupt",
                                   received=f"{path}: tensor {name!r} ({info})",
                                   expected="dtype, shape and offsets that fit the file",
                                   fix="download or save the file again")
            raw = torch.from_numpy(buf[start + lo:start + hi])
            if (start + lo) % dtype.itemsize:  # misaligned for its dtype: a copy
                raw = raw.clone()
            self.tensors[name] = raw.view(dtype).reshape(shape)
            self._spans[name] = (mm, start + lo, start + hi)

    def __deepcopy__(self, memo) -> MappedSafetensors:
        return self  # a copy of the model shares the file mapping (its tensors are copied)

    def release(self, name: str | None = None) -> None:
        """Hand back the pages of tensor `name` (every tensor when None): they leave this
        process's resident memory and are read from the file again if used again. Only
        for tensors not written to (copy-on-write pages would be lost)."""
        if name is not None and name not in self._spans:
            return  # not one of the file's tensors (an SCR layer's, made in memory)
        spans = self._spans.values() if name is None else [self._spans[name]]
        page = mmap.PAGESIZE
        for mm, lo, hi in spans:
            lo = (lo + page - 1) // page * page  # whole pages inside the tensor only
            hi = hi // page * page
            if hi > lo:
                mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def release_all(model) -> None:
    """Hand back the mapped pages of a model loaded by `hf_import.load_llama` (no-op for
    one whose weights are ordinary tensors)."""
    mapped = getattr(model, "mapped_weights", None)
    if mapped is not None:
        mapped.release()


def map_onto_file(model, path: Path) -> bool:
    """Make `model`'s float32 parameters views of the safetensors file at `path` (the
    export's own reference checkpoint, written from these very parameters), so that a
    reference held in ordinary memory (a dequantized GGUF) becomes pages that
    `release_all` can hand back between passes. Each tensor is checked equal to the
    parameter it replaces; returns False (the model unchanged) when the model is mapped
    already or the file does not hold exactly its parameters."""
    if getattr(model, "mapped_weights", None) is not None or not Path(path).is_file():
        return False
    mapped = MappedSafetensors([Path(path)])
    state = model.state_dict()
    if set(state) != set(mapped.tensors) or any(
            v.dtype != torch.float32 or not torch.equal(v, mapped.tensors[k])
            for k, v in state.items()):
        return False
    model.load_state_dict(mapped.tensors, strict=True, assign=True)
    model.mapped_weights = mapped
    return True
