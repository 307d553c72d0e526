"""Model files are checked before anything is allocated (issue 30, class 3): a corrupt
or lying safetensors header, an .npz whose npy header lies about its shape, arrays of the
wrong shape or ids out of range. Oracles: the safetensors library on every file the check
accepts (it must load it), the bytes actually stored, and tracemalloc (a lying header
claiming terabytes allocates nothing near it)."""

from __future__ import annotations

import io
import json
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scredge.arrays_file import save_arrays
from scredge.errors import ScredgeError
from scredge.quantized_tier import Heldout, PositionStats
from scredge.safetensors_file import check_safetensors

safetensors_numpy = pytest.importorskip("safetensors.numpy")


def _valid(tmp_path):
    path = tmp_path / "w.safetensors"
    safetensors_numpy.save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3),
                                 "b": np.ones(4, np.int64)}, str(path))
    return path


def _with_header(path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("case", ["huge_length", "past_end", "wrong_size", "bad_dtype",
                                  "negative_shape", "truncated", "not_object"])
def test_lying_headers_are_refused(tmp_path, case):
    path = tmp_path / "x.safetensors"
    entry = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    if case == "huge_length":
        path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    elif case == "past_end":
        _with_header(path, {"t": {**entry, "data_offsets": [0, 2**40]}}, b"\0" * 16)
    elif case == "wrong_size":
        _with_header(path, {"t": {**entry, "shape": [2**30, 2**30]}}, b"\0" * 16)
    elif case == "bad_dtype":
        _with_header(path, {"t": {**entry, "dtype": "Q99"}}, b"\0" * 16)
    elif case == "negative_shape":
        _with_header(path, {"t": {**entry, "shape": [-1, -16]}}, b"\0" * 16)
    elif case == "truncated":
        path.write_bytes(b"\x05\0\0")
    else:
        _with_header(path, [1, 2], b"")  # type: ignore[arg-type]
    with pytest.raises(ScredgeError, match="not a readable safetensors file|malformed"):
        check_safetensors(path)


@settings(max_examples=60, deadline=None)
@given(position=st.integers(0, 200), byte=st.integers(0, 255))
def test_any_corrupted_byte_is_refused_or_loads(tmp_path_factory, position, byte):
    """Oracle: whatever byte is changed, the check refuses with a ScredgeError or the
    safetensors library loads the file it passed."""
    path = _valid(tmp_path_factory.mktemp("st"))
    data = bytearray(path.read_bytes())
    data[position % len(data)] = byte
    path.write_bytes(bytes(data))
    try:
        check_safetensors(path)
    except ScredgeError:
        return
    safetensors_numpy.load_file(str(path))


def _lying_npz(path, shape) -> None:
    """An .npz whose 'ids' array header claims `shape` over 8 bytes of data."""
    save_arrays(path, {"weights_sha256": "a" * 64, "source": {}},
                {"ids": np.arange(3), "ref_logprob": np.zeros(2), "ref_top1": np.zeros(2, int),
                 "ref_margin": np.zeros(2)})
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<i8", "fortran_order": False,
                                               "shape": shape})
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["ids.npy"] = np.lib.format.magic(1, 0) + buf.getvalue() + b"\0" * 8
    with zipfile.ZipFile(path, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)


def test_npz_header_claiming_terabytes_allocates_nothing(tmp_path):
    _lying_npz(tmp_path / "h.npz", (2**40,))
    tracemalloc.start()
    try:
        with pytest.raises(ScredgeError, match="unreadable"):
            Heldout.load(tmp_path / "h.npz", 100)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


@pytest.mark.parametrize("ids, stats_len, match", [
    (np.array([1, 2, 500]), 2, "outside"),  # id past the vocabulary
    (np.array([[1, 2, 3]]), 2, "2-d"),  # wrong number of dimensions
    (np.array([1.5, 2.0, 3.0]), 2, "float"),  # wrong dtype
    (np.array([1, 2, 3]), 5, "do not fit")])  # statistics of the wrong length
def test_heldout_arrays_of_the_wrong_shape_or_range(tmp_path, ids, stats_len, match):
    stats = PositionStats(np.zeros(stats_len), np.zeros(stats_len, np.int64),
                          np.zeros(stats_len))
    Heldout("a" * 64, {}, ids, stats).save(tmp_path / "h.npz")
    with pytest.raises(ScredgeError, match=match):
        Heldout.load(tmp_path / "h.npz", 100)
