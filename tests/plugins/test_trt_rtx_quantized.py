"""The TensorRT form of the quantized `tiny` (blocked DequantizeLinear + MatMul, opset 21)
through TensorRT for RTX's real parser and builder on the CPU, with and without the
`Realign` plugin. Oracles: SCR_SPEC section 4 (the TensorRT form; weight-only GEMMs: an
INT4/INT8 Dequantize layer feeding each weight MatMul), and the TensorRT API's own verdicts
(parse, build_serialized_network through `scredge build`). No engine can run without a GPU."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import onnx
import pytest

from scredge.artifact import verify_manifest
from scredge.export.quantize import TRT_ONNX_FILE
from scredge.plugins.onnx_modes import decomposed, for_plugin

trt = pytest.importorskip(
    "tensorrt_rtx", reason="TensorRT for RTX is not installed (pip install tensorrt-rtx-cu13)")
pytest.importorskip("polygraphy", reason="polygraphy is not installed")

MODES = {"plugin": for_plugin, "decomposed": decomposed}
WEIGHT_MATRICES = 4 * 8 + 1  # tiny: 4 layers x (q k v o gate up down proj) + the head


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bits", [8, 4])
def test_parser_makes_weight_only_gemms(rtx, tiny_quantized, bits, mode):
    """Every weight matrix arrives as an INT4/INT8 constant through a Dequantize layer with
    block-shaped scales into a MatMul (through a reshape at most); the parser accepts every
    node."""
    model = MODES[mode](onnx.load(str(tiny_quantized[bits] / TRT_ONNX_FILE)))
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(model.SerializeToString()), [
        parser.get_error(i).desc() for i in range(parser.num_errors)]
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    dq = [layer for layer in layers if layer.type == trt.LayerType.DEQUANTIZE]
    want = trt.DataType.INT4 if bits == 4 else trt.DataType.INT8
    assert len(dq) == WEIGHT_MATRICES
    assert {layer.get_input(0).dtype for layer in dq} == {want}
    # block scales: [K / 32, N] for a [K, N] weight
    assert all(layer.get_input(1).shape[0] * 32 == layer.get_input(0).shape[0] for layer in dq)
    consumers = {layer.get_input(i).name: layer for layer in layers
                 for i in range(layer.num_inputs) if layer.get_input(i) is not None}


    def through_shuffles(layer):  # the parser may reshape the weight for the batched MatMul
        nxt = consumers[layer.get_output(0).name]
        return through_shuffles(nxt) if nxt.type == trt.LayerType.SHUFFLE else nxt

    assert {through_shuffles(layer).type for layer in dq} == {trt.LayerType.MATRIX_MULTIPLY}
    plugins = [layer for layer in layers if layer.type == trt.LayerType.PLUGIN_V3]
    assert len(plugins) == (4 if mode == "plugin" else 0)


@pytest.mark.parametrize("bits, mode", [(4, "plugin"), (8, "decomposed")])
def test_scredge_build_uses_the_dequantize_form(tiny_quantized, tmp_path, bits, mode):
    """`scredge build --backend tensorrt_rtx` reads model.trt.onnx (config), builds a plan on
    the CPU, and lists it with the precision that ran."""
    folder = shutil.copytree(tiny_quantized[bits], tmp_path / "a")
    flags = ["--no-plugin"] if mode == "decomposed" else []
    result = subprocess.run(
        [sys.executable, "-m", "scredge", "build", str(folder), "--backend", "tensorrt_rtx",
         "--max-prefill", "32", "--timing-cache", str(tmp_path / "cache"), *flags],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"int{bits} weight-only" in result.stdout and TRT_ONNX_FILE in result.stdout
    manifest = verify_manifest(folder)
    (entry,) = manifest["engines"].values()
    assert entry["graph"] == TRT_ONNX_FILE and entry["precision"].startswith(f"int{bits}")
    assert entry["plugin_mode"] == mode
    assert (folder / entry["file"]).stat().st_size > 0
    assert json.loads((folder / "config.json").read_text())["quantization"]["bits"] == bits
