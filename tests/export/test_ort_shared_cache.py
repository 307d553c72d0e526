"""The shared KV-cache form of quantized graphs and its export option (SCR_SPEC v3 sections
3-5; export/ort_shared_cache.py).

Oracles: the concat onnxruntime form of the same quantized graph (the same MatMulNBits
bytes, fused by ort_fusions.py), run by its own decoder on the same ids and positions, at
float activations (accuracy_level 0, see test_ort_fusions.py for why) within 1e-4; the
quantized tier of section 5, which export and `scredge parity` apply to the artifact."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from scredge.cli import main
from scredge.config import SCRConfig
from scredge.errors import ScredgeError
from scredge.export.graph import export_graph
from scredge.export.ort_shared_cache import (
    check_cache_option,
    default_cache,
    to_shared_cache,
)
from scredge.export.plan_graphs import quantize_graphs
from scredge.export.quantize import QUANT_OPSET, QuantSpec
from scredge.ref import build_model
from scredge.runtime.generation import positions
from scredge.runtime.loaders import ort_session
from scredge.runtime.runners.ort_runner import OrtDecoder, OrtRunner
from scredge.runtime.shared_cache import SharedDecoder

W8 = SCRConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
               window=8, scr_layers=(0, 1))


def _float_activations(proto) -> None:
    for node in proto.graph.node:
        for a in node.attribute:
            if node.op_type == "MatMulNBits" and a.name == "accuracy_level":
                a.i = 0


@pytest.fixture(scope="module")
def w8_graph():
    model = build_model(W8, seed=5).eval()
    return export_graph(model, QUANT_OPSET)


@pytest.mark.parametrize("bits", [pytest.param(8, marks=pytest.mark.slow), 4])
def test_quantized_shared_equals_quantized_concat(bits, w8_graph):
    """60 positions of a W = 8 model (a prefill of 5, steps, a chunk of 12): the shared
    quantized graph's logits equal the concat quantized graph's at every call."""
    concat = quantize_graphs(w8_graph, QuantSpec(bits), W8).ort
    _float_activations(concat)
    shared = onnx.ModelProto()
    shared.CopyFrom(concat)
    assert to_shared_cache(shared, W8) == W8.n_layers
    ops = [n.op_type for n in shared.graph.node]
    assert ops.count("GroupQueryAttention") == 2 and "MatMulNBits" in ops

    def runner(proto):
        return OrtRunner(ort_session(proto.SerializeToString(), "cpu", threads=1), W8,
                         np.float32)

    a, b = runner(concat).decoder(2), SharedDecoder(runner(shared), 2, capacity=16)
    assert isinstance(a, OrtDecoder)
    ids = np.random.default_rng(0).integers(0, 256, (2, 60))
    s = 0
    while s < 60:
        e = s + {0: 5, 30: 12}.get(s, 1)
        x, pos = ids[:, s:e], positions(s, 2, e - s)
        assert np.abs(a.step(x, pos) - b.step(x, pos)).max() <= 1e-4, (s, e)
        s = e


@pytest.mark.slow
def test_quantized_default_is_the_shared_form(tiny_quantized, capsys):
    """`export --quantize int4` (tiny) without --cache: the export's quantized tier passed
    on the shared graph, config.json names both forms, and `scredge parity` passes on it."""
    out = tiny_quantized[4]
    from scredge.contract import ONNX_DATA_FILE, TRT_ONNX_FILE

    config = json.loads((out / "config.json").read_text())
    graphs = config["quantization"]["graphs"]
    assert config["graph_version"] == 3
    assert graphs["ort"]["cache"] == "shared" and graphs["trt"]["cache"] == "concat"
    trt = onnx.load(str(out / TRT_ONNX_FILE), load_external_data=False)
    files = {e.value for i in trt.graph.initializer for e in i.external_data
             if e.key == "location"}
    assert ONNX_DATA_FILE in files  # its norms: stored once, in the ort form's file
    assert main(["parity", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"]


def test_cache_option_refused_before_work():
    with pytest.raises(ScredgeError, match="unknown KV-cache form"):
        check_cache_option("paged")
    with pytest.raises(ScredgeError, match="an onnxruntime graph form"):
        check_cache_option("shared", ("trt",))
    assert check_cache_option(None, ("trt",)) is None  # not given: the default's


def test_default_cache_form():
    """Shared wherever there is an onnxruntime graph; concat for a TensorRT-only folder."""
    assert default_cache() == default_cache(("ort",)) == "shared"
    assert default_cache(("trt",)) == "concat"
