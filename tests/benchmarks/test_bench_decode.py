"""benchmarks/bench_decode.py's guard against benchmarking a stale artifact. Oracle: file
modification times (an artifact older than the reference model or the exporter may hold
a graph this code no longer exports)."""

from __future__ import annotations

import os

from scripts import REPO, load_script


def test_artifact_older_than_the_exporter_is_stale(tmp_path):
    bench = load_script("benchmarks/bench_decode.py")
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"")
    newest = max(f.stat().st_mtime for d in ("scr_ref", "export")
                 for f in (REPO / d).glob("*.py"))
    os.utime(onnx_file, (newest + 60, newest + 60))
    assert not bench.is_stale(tmp_path)
    os.utime(onnx_file, (newest - 60, newest - 60))
    assert bench.is_stale(tmp_path)
