"""Weight-only int8 / int4 artifacts (SCR_SPEC sections 4 and 5) from the shipped `tiny`.

Oracles: the spec's artifact form (which matrices are quantized, which stay float, both
graphs listed), onnxruntime's own quantizer output (the TensorRT form must hold its
integers and scales), and the quantized tier's thresholds."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx_graphs import copy_model, export_graph_stand_in

from scredge.cli import main
from scredge.contract import HELDOUT_FILE, MANIFEST_FILE, ONNX_FILE, TRT_ONNX_FILE
from scredge.errors import ScredgeError
from scredge.export import pipeline
from scredge.export.plan_graphs import quantize_graphs
from scredge.export.quantize import QuantSpec
from scredge.quantized_tier import run_quantized_parity
from scredge.runtime.loaders import load_ort, open_artifact


@pytest.mark.parametrize("bits", [8, 4])
def test_artifact_form(tiny_quantized, bits):
    """SCR_SPEC section 4: config says bits/block/method/matrices and which graph each
    backend reads; the manifest lists both graphs and the held-out reference; the
    onnxruntime form is MatMulNBits, the TensorRT form blocked DequantizeLinear at opset 21;
    the embedding stays a float Gather; both graphs passed the tier at export."""
    folder = tiny_quantized[bits]
    config = json.loads((folder / "config.json").read_text())
    q = config["quantization"]
    assert (q["bits"], q["block_size"], q["method"]) == (bits, 32, "rtn")
    assert q["graphs"]["ort"]["file"] == ONNX_FILE and q["graphs"]["trt"]["file"] == TRT_ONNX_FILE
    names = {m.rsplit(".", 1)[-1] for m in q["matrices"]}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                     "down_proj", "proj", "lm_head"}
    assert len(q["matrices"]) == 4 * 8 + 1
    assert all(r["passed"] for r in q["verification"].values())
    manifest = json.loads((folder / MANIFEST_FILE).read_text())["files"]
    assert {ONNX_FILE, TRT_ONNX_FILE, HELDOUT_FILE} <= set(manifest)

    ort_form = onnx.load(str(folder / ONNX_FILE))
    nbits = [n for n in ort_form.graph.node if n.op_type == "MatMulNBits"]
    # 33 matrices; q/k/v and gate/up packed per layer (export/ort_fusions.py): 21 nodes
    # whose rows are every matrix's: 4 x (128 + 64 + 64 + 128 + 384 + 384 + 128 + 128) + 256
    assert len(nbits) == 33 - 4 * 3
    assert sum(a.i for n in nbits for a in n.attribute if a.name == "N") == 4 * 1408 + 256
    assert q["graphs"]["ort"]["fused"] == {"rms_norm": 9, "skip_norm": 8, "rotary": 8,
                                           "packed_matmuls": 20, "attention": 4}
    assert {a.i for n in nbits for a in n.attribute if a.name == "bits"} == {bits}
    inits = {i.name: i for i in ort_form.graph.initializer}
    gathers = [n for n in ort_form.graph.node if n.op_type == "Gather" and n.input[0] in inits]
    assert gathers and all(inits[n.input[0]].data_type == onnx.TensorProto.FLOAT
                           for n in gathers)

    trt_form = onnx.load(str(folder / TRT_ONNX_FILE))
    assert max(o.version for o in trt_form.opset_import if o.domain == "") >= 21
    assert not any(n.domain == "com.microsoft" for n in trt_form.graph.node)
    dq = [n for n in trt_form.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 33
    tinits = {i.name: i for i in trt_form.graph.initializer}
    want = onnx.TensorProto.INT8 if bits == 8 else onnx.TensorProto.INT4
    assert {tinits[n.input[0]].data_type for n in dq} == {want}
    assert all(numpy_helper.to_array(tinits[n.input[1]]).min() > 0 for n in dq)
    assert {a.i for n in dq for a in n.attribute if a.name == "block_size"} == {32}


def test_trt_form_holds_the_quantizers_numbers(tiny_opset21):
    """Oracle: onnxruntime's quantizer writing its own DequantizeLinear (QDQ) form of the
    same weight. Dequantized, the TensorRT form equals it everywhere except the values it
    put at -8 in a block with a negative scale: flipped to a positive scale, they saturate
    at +7 (TensorRT takes positive scales only)."""
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    model, proto = tiny_opset21
    g = quantize_graphs(proto, QuantSpec(4), model.config)
    name = next(n.input[1] for n in proto.graph.node if n.name.endswith("q_proj/MatMul"))
    algo = mnq.DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, bits=4,
                                            quant_format=QuantFormat.QDQ)
    qdq = mnq.MatMulNBitsQuantizer(copy_model(proto), algo_config=algo)
    qdq.process()
    theirs = {i.name: numpy_helper.to_array(i) for i in qdq.model.model.graph.initializer}
    ours = {i.name: numpy_helper.to_array(i) for i in g.trt.graph.initializer}

    def dequantized(arrays, q, s):
        return arrays[q].astype(np.float32) * np.repeat(arrays[s], 32, axis=0)

    a = dequantized(ours, name + "_DQ_q4", name + "_DQ_scales")
    b = dequantized(theirs, name + "_DQ_Q4", name + "_DQ_scales")
    differ = ~np.isclose(a, b, rtol=0, atol=1e-7)
    assert differ.mean() < 0.05
    # exactly the values onnxruntime put at -8 in a negative-scale block, now +7 x |scale|
    q, s = theirs[name + "_DQ_Q4"], np.repeat(theirs[name + "_DQ_scales"], 32, axis=0)
    assert np.array_equal(differ, (q == -8) & (s < 0))
    np.testing.assert_allclose(a[differ], -7 * s[differ], rtol=1e-6)


def test_runtime_reads_the_onnxruntime_form_and_parity_passes(tiny_quantized, capsys):
    """The runtime picks MatMulNBits for onnxruntime and the DequantizeLinear form for
    TensorRT (config); `scredge parity`, torch-free, re-runs the tier from the stored
    reference and passes; `info` and `bench` say the precision."""
    folder = tiny_quantized[4]
    artifact = open_artifact(folder)
    assert artifact.graph_file("ort") == ONNX_FILE
    assert artifact.graph_file("trt") == TRT_ONNX_FILE
    assert artifact.precision == "int4 weight-only (rtn, block 32)"
    runner = load_ort(artifact, device="cpu")
    report = run_quantized_parity(artifact, runner, ONNX_FILE)
    assert report.passed and report.positions == 4096 and report.ratio <= 1.05
    assert main(["parity", str(folder), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] and out["precision"].startswith("int4")
    assert main(["info", str(folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)["artifact"]
    assert info["precision"].startswith("int4") and info["ort_fused"]["attention"] == 4
    assert main(["parity", str(folder), "--record"]) == 2


def test_an_artifact_that_misses_the_tier_is_refused(tiny_opset21, tmp_path, monkeypatch):
    """Oracle: the tier's verdict. With a threshold no int4 model can meet (perplexity
    ratio below 1), export raises and leaves no folder behind."""
    from scredge.export import quantized_artifact
    from scredge.tiers import QuantizedThresholds

    model, proto = tiny_opset21
    monkeypatch.setattr(pipeline, "export_graph", export_graph_stand_in(proto))
    monkeypatch.setattr("scredge.quantized_tier.quantized_thresholds",
                        lambda bits: QuantizedThresholds(0.99, 0.9))
    record = quantized_artifact.record_heldout  # a shorter text: the verdict is the oracle
    monkeypatch.setattr(quantized_artifact, "record_heldout",
                        lambda m, sha, tokenizer: record(m, sha, 512, tokenizer))
    with pytest.raises(ScredgeError, match="misses the int4 tier"):
        pipeline.export_artifact(model, tmp_path / "a", quantize=QuantSpec(4))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, message", [
    (["--quantize", "int4", "--dtype", "float16"], "needs a float32 export"),
    (["--quantize", "int3"], "unknown quantization"),
    (["--quantize", "int4", "--block-size", "256"], "does not divide the model width"),
    (["--quantize", "int4", "--block-size", "24"], "invalid quantization block size"),
    (["--quantize", "int8", "--quant-method", "hqq"], "hqq is offered for int4 only"),
    (["--block-size", "32"], "need --quantize"),
    (["--activations", "int8"], "need --quantize"),
    (["--quantize", "int4", "--opset", "18"], "opset 21"),
])
def test_bad_quantize_options_are_refused(argv, message, tmp_path, capsys):
    """Oracle: ScredgeError's message, exit status 2 and nothing written."""
    out = tmp_path / "a"
    assert main(["export", "--preset", "tiny", "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_activations_choose_the_accuracy_level_of_every_matrix():
    """Oracle: onnxruntime's MatMulNBits levels (0: float32 activations, 4: int8). The
    default keeps float32 for int4 on folded float zero points only; --activations sets
    all; an unknown value is refused by name."""
    default = QuantSpec.parse("int4", None, None)
    assert (default.accuracy_level(folded=True), default.accuracy_level(folded=False)) == (0, 4)
    fast = QuantSpec.parse("int4", None, None, activations="int8")
    assert (fast.accuracy_level(folded=True), fast.accuracy_level(folded=False)) == (4, 4)
    exact = QuantSpec.parse("int8", None, None, activations="float32")
    assert (exact.accuracy_level(folded=True), exact.accuracy_level(folded=False)) == (0, 0)
    with pytest.raises(ScredgeError, match="unknown --activations"):
        QuantSpec.parse("int4", None, None, activations="int16")


def test_a_quantspec_built_in_code_is_refused_the_same_way(tmp_path):
    """The library's own check (QuantSpec.check, for a spec not from the command line)
    refuses a float16 export with the command line's message. Oracle: that message."""
    from scredge.config import SCRConfig

    with pytest.raises(ScredgeError, match="needs a float32 export"):
        QuantSpec(4).check("float16", SCRConfig())

def test_parity_runs_without_torch(tiny_quantized):
    """Oracle: a child interpreter where `import torch` fails runs `scredge parity` on the
    int8 artifact from its stored held-out reference and passes (exit 0)."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from scredge.cli import main\nsys.exit(main(['parity', sys.argv[1]]))")
    result = subprocess.run([sys.executable, "-c", code, str(tiny_quantized[8])],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "int8 model.onnx" in result.stdout and "PASS" in result.stdout


@pytest.mark.slow
def test_hqq_keeps_its_zero_points_for_onnxruntime_and_rtn_for_tensorrt(tiny_opset21):
    """Oracle: SCR_SPEC section 4 (both forms, the config says which method each holds).
    HQQ's float zero points reach MatMulNBits; the TensorRT form, which has no float zero
    point, is the symmetric rtn quantization."""
    model, proto = tiny_opset21
    g = quantize_graphs(proto, QuantSpec(4, method="hqq"), model.config)
    nbits = [n for n in g.ort.graph.node if n.op_type == "MatMulNBits"]
    # 33 matrices, q/k/v and gate/up packed per layer, every one with its zero points
    assert len(nbits) == 33 - 4 * 3 and all(len(n.input) == 4 for n in nbits)
    dq = [n for n in g.trt.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 33 and all(len(n.input) == 2 for n in dq)  # symmetric: no zero point
    assert g.trt_method == "rtn"


def test_an_older_onnxruntime_is_refused_with_the_version_it_needs(tiny_quantized):
    """Oracle: the config's `min_onnxruntime` (the oldest release with every fused kernel
    of the onnxruntime form): an older one gets a clear error, never a kernel-lookup
    failure deep in onnxruntime; the installed one passes."""
    import onnxruntime

    from scredge.runtime.loaders import _check_onnxruntime_version

    artifact = open_artifact(tiny_quantized[8])
    need = artifact.quantization["graphs"]["ort"]["min_onnxruntime"]
    with pytest.raises(ScredgeError, match=f"onnxruntime>={need}"):
        _check_onnxruntime_version(artifact, "1.22.1")
    _check_onnxruntime_version(artifact, onnxruntime.__version__)
    _check_onnxruntime_version(artifact, f"{need}.0.dev20260101")  # a build of that release
