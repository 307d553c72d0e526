"""What onnxruntime runs on CUDA for a folder whose onnxruntime graph has the shared KV cache
(the default export, SCR_SPEC v3 section 3): the shared form runs on the CPU provider only,
so `loaders.ort_graph` picks the folder's concat TensorRT graph there, or refuses a folder
without one by name.

No GPU here: the choice itself (`ort_graph(artifact, "cuda")`) is a pure function of the
folder; the load path is tested with the provider choice faked to 'cuda' while the session
stays on the CPU (`ort_kind` is the one place load_ort asks). Oracles: the shared graph of
the same folder (the same verified weights) every decode call within 1e-4, and, quantized,
the int4 tier against the held-out reference recorded at export (SCR_SPEC section 5)."""

from __future__ import annotations

import numpy as np
import pytest

from scredge.contract import TRT_ONNX_FILE
from scredge.errors import ScredgeError
from scredge.runtime import loaders
from scredge.runtime.generation import positions
from scredge.runtime.loaders import load_ort, open_artifact, ort_graph
from scredge.runtime.shared_cache import SharedDecoder

TOL = 1e-4  # the fused kernels' float32 reassociation, logits of magnitude ~1-10


def test_cuda_picks_the_concat_graph_of_a_shared_folder(small_window_artifact):
    artifact = open_artifact(small_window_artifact[1])
    assert artifact.cache_form("ort") == "shared"
    assert ort_graph(artifact, "cpu") == ("model.onnx", "shared")
    assert ort_graph(artifact, "cuda") == (TRT_ONNX_FILE, "concat")


def test_cuda_refuses_a_shared_folder_without_a_concat_graph(small_window_artifact, tmp_path):
    """--target ort: no model.trt.onnx; the message names --device cpu and --cache concat."""
    from conftest import WINDOWED

    from scredge.export.pipeline import export_artifact
    from scredge.ref import build_model

    out = export_artifact(build_model(WINDOWED, seed=1, gamma=0.5, std=0.08),
                          tmp_path / "ort-only", target="ort")
    artifact = open_artifact(out)
    assert ort_graph(artifact, "cpu") == ("model.onnx", "shared")
    with pytest.raises(ScredgeError, match=r"CPU provider only(.|\n)*--device cpu(.|\n)*"
                                           r"--cache concat"):
        ort_graph(artifact, "cuda")


def _fake_cuda(monkeypatch):
    monkeypatch.setattr(loaders, "ort_kind", lambda device: "cuda")


def test_load_on_cuda_runs_the_concat_graph(small_window_artifact, monkeypatch):
    """The runner load_ort gives on 'CUDA' runs model.trt.onnx (concat decoder), and every
    call of a prefill and 30 decode steps (past the window of 16) equals the shared graph's."""
    folder = small_window_artifact[1]
    shared = load_ort(open_artifact(folder), device="cpu")
    _fake_cuda(monkeypatch)
    concat = load_ort(open_artifact(folder), device="cpu")
    assert (shared.graph, shared.cache) == ("model.onnx", "shared")
    assert (concat.graph, concat.cache) == (TRT_ONNX_FILE, "concat")
    B, total = 2, 36
    ids = np.random.default_rng(4).integers(0, 256, (B, total))
    a, b = shared.decoder(B), concat.decoder(B)
    assert isinstance(a, SharedDecoder) and not isinstance(b, SharedDecoder)
    s = 0
    for e in (6, *range(7, total + 1)):
        x, pos = ids[:, s:e], positions(s, B, e - s)
        assert np.abs(a.step(x, pos) - b.step(x, pos)).max() <= TOL, (s, e)
        s = e


def test_quantized_load_on_cuda_meets_its_tier(tiny_quantized, monkeypatch):
    """int4 (shared onnxruntime form by default): on 'CUDA' the DequantizeLinear form runs
    in onnxruntime, weight-only, and passes the int4 tier against the held-out reference."""
    from scredge.quantized_tier import run_quantized_parity

    artifact = open_artifact(tiny_quantized[4])
    assert artifact.cache_form("ort") == "shared"
    _fake_cuda(monkeypatch)
    runner = load_ort(artifact, device="cpu")
    assert (runner.graph, runner.cache) == (TRT_ONNX_FILE, "concat")
    report = run_quantized_parity(artifact, runner, runner.graph)
    assert report.passed, report.summary()
