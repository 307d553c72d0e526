"""The GGUF header walk (core/gguf_file.py, issue 30 class 3). Oracles: a file written by
the gguf package's own GGUFWriter passes (metadata arrays of strings and numbers
included), and so does every prefix check the reader itself would pass; a header whose
counts or lengths exceed the file, a bad magic or version, too many dimensions or a tensor
larger than the file is a ScredgeError at once (before: llama.cpp's reader looped over a
claimed 2**40-element array for minutes)."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scredge.errors import ScredgeError
from scredge.gguf_file import check_gguf_header

gguf = pytest.importorskip("gguf", reason="gguf (export extra) not installed")


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("gguf") / "ok.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_token_list([f"tok{i}" for i in range(300)])
    w.add_token_scores([0.5] * 300)
    w.add_array("test.nested", [[1, 2], [3]])
    w.add_tensor("token_embd.weight", np.zeros((16, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("scratch")


def _check(tmp_path, data: bytes) -> None:
    path = tmp_path / "f.gguf"
    path.write_bytes(data)
    check_gguf_header(path)


def test_a_written_file_passes(valid, tmp_path):
    _check(tmp_path, valid)
    gguf.GGUFReader(str(tmp_path / "f.gguf"))  # and the library agrees


def _kv_header(kvs: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, 0, kvs)


def _key(name: bytes) -> bytes:
    return struct.pack("<Q", len(name)) + name


@pytest.mark.parametrize("name,data", [
    ("empty", b""),
    ("magic", b"GGUX" + struct.pack("<IQQ", 3, 0, 0)),
    ("version", b"GGUF" + struct.pack("<IQQ", 1, 0, 0)),
    ("kv count", _kv_header(2**62)),
    ("key length", _kv_header(1) + struct.pack("<Q", 2**62) + b"k" * 64),
    ("array 2**40", _kv_header(1) + _key(b"a") + struct.pack("<IIQ", 9, 4, 2**40)),
    ("string array 2**40", _kv_header(1) + _key(b"a") + struct.pack("<IIQ", 9, 8, 2**40)),
    ("value type", _kv_header(1) + _key(b"a") + struct.pack("<I", 77) + b"\0" * 64),
    ("tensor dims", b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + _key(b"t")
     + struct.pack("<I", 9) + b"\0" * 200),
    ("tensor size", b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + _key(b"t")
     + struct.pack("<IQQ", 2, 2**40, 2**40) + struct.pack("<IQ", 0, 0)),
])
def test_a_lying_header_is_refused_at_once(tmp_path, name, data):
    t0 = time.monotonic()
    with pytest.raises(ScredgeError, match="not a readable GGUF file"):
        _check(tmp_path, data)
    assert time.monotonic() - t0 < 1.0, name


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(0, 10**6), flip=st.integers(0, 10**6), bit=st.integers(0, 7))
def test_truncated_or_flipped_headers_end_in_a_refusal_or_a_pass(valid, scratch, cut, flip,
                                                                   bit):
    """Any prefix of a valid file with any one bit flipped: the walk passes or refuses
    with a ScredgeError, never another exception, and fast."""
    data = bytearray(valid[:cut % (len(valid) + 1)])
    if data:
        data[flip % len(data)] ^= 1 << bit
    t0 = time.monotonic()
    try:
        _check(scratch, bytes(data))
    except ScredgeError:
        pass
    assert time.monotonic() - t0 < 1.0
