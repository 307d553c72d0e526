"""The Realign custom-op kernel on onnxruntime's CUDA provider (onnxruntime-gpu), on a GPU.

Builds `libscr_realign_ort_cuda.so` (realign_ort.cpp + the TensorRT plugin's
realign_kernel.cu, nvcc), then:
1. the runtime's probe on device 'cuda' must pick the kernel;
2. op tier on a one-node graph with `session.disable_cpu_ep_fallback` (so the session fails
   unless the CUDA provider takes the node: the CUDA kernel, not the CPU one, runs),
   float32 and float16, against the float64 oracle of tests/oracles.py (1e-5 / 2e-3 x scale);
3. the same graph with the function body on CUDA, timed against the kernel (medians);
4. with artifact folders: the runtime on device 'cuda' with the kernel and with the
   function body, logits of a prefill and 32 decode steps within 1e-4 of each other.

    python tools/gpu_check_ort_kernel.py [ARTIFACT ...] [--json PATH]

Exit 0 all passed, 1 a check failed, 2 cannot run here (no GPU, no onnxruntime-gpu, no nvcc).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
CASES = [(1, 1, 512), (4, 1, 256), (2, 300, 64), (1, 4096, 128), (3, 257, 33), (1, 100_000, 16)]
TOL = {"float32": 1e-5, "float16": 2e-3}


def _model(D, x_type):
    from onnx import TensorProto, helper

    from scredge.contract import REALIGN_INPUTS, REALIGN_OUTPUTS
    from scredge.export.realign_onnx import realign_function

    shapes = {"h": ["B", "T", D], "m_prev": ["B", "T", D], "num_in": ["B", D],
              "den_in": ["B", 1], "w_r": [D], "b_r": [1], "w_g": [D], "b_g": [1]}
    t = {"h": x_type, "m_prev": x_type}
    ins = [helper.make_tensor_value_info(n, t.get(n, TensorProto.FLOAT), shapes[n])
           for n in REALIGN_INPUTS]
    outs = [helper.make_tensor_value_info("m", x_type, ["B", "T", D]),
            helper.make_tensor_value_info("num_out", TensorProto.FLOAT, ["B", D]),
            helper.make_tensor_value_info("den_out", TensorProto.FLOAT, ["B", 1])]
    node = helper.make_node("Realign", list(REALIGN_INPUTS), list(REALIGN_OUTPUTS),
                            domain="scr", kappa=8.0)
    return helper.make_model(helper.make_graph([node], "r", ins, outs),
                             opset_imports=[helper.make_opsetid("", 18),
                                            helper.make_opsetid("scr", 1)],
                             functions=[realign_function(18)]).SerializeToString()


def _session(model, library, strict):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if library:
        opts.register_custom_ops_library(str(library))
    if strict:
        opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return ort.InferenceSession(model, opts, providers=["CUDAExecutionProvider"])


def _median_ms(session, feed, n):
    for _ in range(5):
        session.run(None, feed)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def op_checks(library) -> list[dict]:
    from onnx import TensorProto

    from oracles import random_inputs, realign_spec_f64
    from scredge.contract import REALIGN_INPUTS

    rows = []
    for dtype, x_type in (("float32", TensorProto.FLOAT), ("float16", TensorProto.FLOAT16)):
        for B, T, D in CASES:
            arrays = random_inputs(np.random.default_rng(B * T + D), B, T, D)
            if dtype == "float16":
                arrays[:2] = [a.astype(np.float16).astype(np.float32) for a in arrays[:2]]
            feed = dict(zip(REALIGN_INPUTS, arrays))
            feed["h"], feed["m_prev"] = (feed[k].astype(dtype) for k in ("h", "m_prev"))
            model = _model(D, x_type)
            kernel = _session(model, library, strict=True)
            m, num, den = kernel.run(None, feed)
            ref = realign_spec_f64(*arrays)
            scale = max(1.0, np.abs(arrays[0]).max(), np.abs(arrays[1]).max())
            err = float(np.abs(m.astype(np.float64) - ref[0]).max() / scale)
            den_err = float(np.abs(den - ref[2]).max() / np.abs(ref[2]).max())
            ok = err <= TOL[dtype] and den_err <= 1e-5 and np.isfinite(m).all()
            n = 200 if T == 1 else 20
            row = {"dtype": dtype, "B": B, "T": T, "D": D, "err_x_scale": err,
                   "den_rel_err": den_err, "passed": bool(ok),
                   "kernel_ms": _median_ms(kernel, feed, n),
                   "function_ms": _median_ms(_session(model, None, False), feed, n)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def runtime_checks(folders) -> list[dict]:
    from scredge.runtime import Engine
    from scredge.runtime.realign_kernel import ENV_CHOICE

    rows = []
    for folder in folders:
        logits = {}
        for choice in ("custom-op", "function"):
            os.environ[ENV_CHOICE] = choice
            engine = Engine.load(folder, backend="ort", device="cuda")
            dec = engine.runner.decoder(1)
            ids = np.arange(1, 17, dtype=np.int64)[None]
            out = [dec.step(ids, np.arange(16)[None]).copy()]
            for i in range(32):
                out.append(dec.step(np.array([[i + 3]]), np.array([[16 + i]])).copy())
            logits[choice] = (engine.realign_kernel, out)
        os.environ.pop(ENV_CHOICE)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(logits["custom-op"][1],
                                                              logits["function"][1]))
        row = {"artifact": str(folder), "ran": [logits[c][0] for c in logits],
               "max_logit_diff": diff,
               "passed": diff <= 1e-4 and logits["custom-op"][0] == "custom-op"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="*", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import onnxruntime as ort

    from scredge.errors import ScredgeError
    from scredge.plugins.realign.ort_kernel import build_library
    from scredge.runtime.realign_kernel import probe

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print(f"onnxruntime {ort.__version__} has no CUDA provider (pip install onnxruntime-gpu)")
        return 2
    try:
        library = build_library(Path(tempfile.mkdtemp()) / "libscr_realign_ort_cuda.so",
                                cuda=True)
    except ScredgeError as exc:
        print(f"cannot build the CUDA library: {exc}")
        return 2
    picked = probe(library, "cuda")
    print(f"probe on cuda: {picked.describe()}", flush=True)
    report = {"onnxruntime": ort.__version__, "probe": picked.kind,
              "ops": op_checks(library), "runtime": []}
    if args.artifacts:
        os.environ["SCREDGE_REALIGN_ORT_LIB"] = str(library)
        report["runtime"] = runtime_checks(args.artifacts)
    passed = picked.kind == "custom-op" and all(
        r["passed"] for r in report["ops"] + report["runtime"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print("onnxruntime CUDA Realign kernel:", "PASSED" if passed else "FAILED")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
