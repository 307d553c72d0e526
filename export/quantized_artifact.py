"""The quantized half of `export_artifact`: both graphs written, the held-out reference
recorded, and each graph run by onnxruntime against the quantized tier of SCR_SPEC
section 5. An artifact that misses the tier is refused (nothing is written)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from scredge.artifact import sha256_file
from scredge.contract import (
    CACHE_SHARED,
    HELDOUT_FILE,
    ONNX_DATA_FILE,
    ONNX_FILE,
    TRT_ONNX_FILE,
    WEIGHTS_FILE,
)
from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.export.heldout import record_heldout
from scredge.export.quantize import QuantSpec, config_section, quantize_graphs
from scredge.quantized_tier import QuantizedReport, check_runner
from scredge.tokenizer_files import TokenizerFiles

EXTERNAL_DATA_BYTES = 1 << 30
# onnxruntime fuses DequantizeLinear+MatMul into MatMulNBits with int8 *activations* unless
# told otherwise; level 0 keeps the TensorRT form weight-only, as TensorRT runs it.
QDQ_ACCURACY_KEY = "session.qdq_matmulnbits_accuracy_level"


def ort_session(path: Path, dequantize_form: bool = False):
    """A CPU onnxruntime session for a quantized graph (weight-only numerics)."""
    from scredge.runtime.loaders import ort_session as make_session

    return make_session(path, "cpu",
                        config_entries={QDQ_ACCURACY_KEY: "0"} if dequantize_form else None)


def _save(proto, path: Path) -> None:
    onnx = require("onnx")
    large = proto.ByteSize() > EXTERNAL_DATA_BYTES
    onnx.save_model(proto, str(path), save_as_external_data=large,
                    all_tensors_to_one_file=True,
                    location=ONNX_DATA_FILE if path.name == ONNX_FILE else path.name + ".data")


def verify_quantized(tmp: Path, model, spec: QuantSpec, heldout,
                     log: Callable[[str], None]) -> dict[str, QuantizedReport]:
    """Both graphs in `tmp`, teacher-forced over the held-out text, judged by the tier."""
    from scredge.runtime.runners.ort_runner import OrtRunner

    reports = {}
    for backend, name in (("ort", ONNX_FILE), ("trt", TRT_ONNX_FILE)):
        runner = OrtRunner(ort_session(tmp / name, dequantize_form=backend == "trt"),
                           model.config, np.float32)
        rep = check_runner(heldout, runner, spec.bits, name)
        log("  " + rep.summary())
        if not rep.passed:
            raise ScredgeError(
                f"quantized export refused: {name} misses the int{spec.bits} tier",
                received="; ".join(rep.failures),
                expected="SCR_SPEC section 5, quantized tier",
                fix="nothing was written; try --quantize int8, a smaller --block-size, or "
                    "another --quant-method")
        reports[backend] = rep
    return reports


def calibrate(model, spec: QuantSpec, tokenizer: TokenizerFiles | None,
              log: Callable[[str], None]) -> tuple[dict | None, dict | None]:
    """For a calibrated method: (the per-scope input Hessians, the calibration record)."""
    if spec.calibration is None:
        return None, None
    from scredge.export.gptq import Calibration, input_hessians

    cal = Calibration.load(spec.calibration, tokenizer, model.config.vocab_size)
    log(f"running the reference over {cal.source['tokens']} calibration tokens "
        f"({cal.source['file']}) ...")
    return input_hessians(model, cal.ids), cal.source


def quantize_artifact(tmp: Path, float_proto, model, spec: QuantSpec,
                      log: Callable[[str], None],
                      tokenizer: TokenizerFiles | None = None, cache: str = "concat") -> dict:
    """Replace tmp/model.onnx (the verified float graph) with the onnxruntime form, add the
    TensorRT form and the held-out reference; returns config.json's `quantization`.
    `tokenizer` encodes the calibration and held-out texts (bytes without one); `cache`
    "shared": the onnxruntime form gets the in-place KV cache (export/ort_shared_cache.py)."""
    hessians, calibration = calibrate(model, spec, tokenizer, log)
    how = "onnxruntime's MatMulNBitsQuantizer" + (", GPTQ" if spec.method == "gptq" else "")
    log(f"quantizing weights to int{spec.bits} ({spec.method}, block {spec.block_size}) "
        f"with {how} ...")
    graphs = quantize_graphs(float_proto, spec, model.config, hessians)
    if cache == CACHE_SHARED:
        from scredge.export.ort_shared_cache import to_shared_cache

        to_shared_cache(graphs.ort, model.config)
    for stale in (tmp / ONNX_DATA_FILE,):
        stale.unlink(missing_ok=True)
    _save(graphs.ort, tmp / ONNX_FILE)
    _save(graphs.trt, tmp / TRT_ONNX_FILE)
    log(f"  {len(graphs.matrices)} matrices quantized; onnxruntime form: "
        f"{graphs.fusions.summary()}")
    log("recording the float32 reference over the held-out text ...")
    heldout = record_heldout(model, sha256_file(tmp / WEIGHTS_FILE), tokenizer=tokenizer)
    log("checking both graphs against the quantized tier ...")
    reports = verify_quantized(tmp, model, spec, heldout, log)
    heldout.save(tmp / HELDOUT_FILE)
    section = config_section(spec, graphs, ONNX_FILE, calibration)
    if cache == CACHE_SHARED:
        from scredge.export.ort_shared_cache import graph_entries

        shared = graph_entries()
        for backend in ("ort", "trt"):
            section["graphs"][backend].update(shared[backend])
    section["heldout"] = {"file": HELDOUT_FILE, **heldout.source}
    section["verification"] = {b: r.to_json() for b, r in reports.items()}
    return section
