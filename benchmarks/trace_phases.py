"""Where the shallow trace's CPU goes (issue 27): `stamp_graph` on a real model's config, in
one process with torch on one thread and the modules the exporting process has imported at
the fork already loaded, as the trace's child runs it. Each phase is timed by the process's
CPU clock around the function that does it (torch.onnx's own functions wrapped for this
run only; the figures are its breakdown, not a second implementation). Usage:

    python benchmarks/trace_phases.py HF_FOLDER [--dtype float32|float16]
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import time
from pathlib import Path

import onnx
import torch
import torch._dynamo  # noqa: F401  (the exporting process has it at the fork)
import torch.onnx

# the exporter's own modules, which the child imports (~0.1 CPU-s), load here, before the
# timed part; torchlib's ops (~0.4) load inside the timed registry phase, as in the child
from torch.onnx._internal.exporter import (
    _capture_strategies,
    _core,
    _onnx_program,
    _registration,
)

import scredge.export.graph as graph
import scredge.export.stamp as stamp
from scredge.ref.hf_import import hf_config_and_tokenizer

TOTALS: dict[str, float] = {}


def _add(label: str, seconds: float) -> None:
    TOTALS[label] = TOTALS.get(label, 0.0) + seconds


def _timed(owner, name: str, label: str) -> None:
    f = getattr(owner, name)

    @functools.wraps(f)
    def wrapper(*a, **k):
        t = time.process_time()
        try:
            return f(*a, **k)
        finally:
            _add(label, time.process_time() - t)

    setattr(owner, name, wrapper)


def _wrap_all() -> None:
    _timed(_capture_strategies.TorchExportNonStrictStrategy, "__call__",
           "1 torch.export (capture)")
    _timed(_core, "_prepare_exported_program_for_export", "2 run_decompositions + fx passes")
    _timed(_core, "_exported_program_to_onnx_program", "3 translation to ONNX IR")
    _timed(_onnx_program.ONNXProgram, "optimize", "4 onnxscript optimizer")
    _timed(onnx.checker, "check_model", "6 onnx checker")
    _timed(torch.onnx, "export", "= torch.onnx.export, all")
    _timed(stamp, "_find_recipes", "7 _find_recipes")
    _timed(stamp, "_stamp", "8 _stamp (with _find_recipes)")
    registry = _registration.ONNXRegistry.from_torchlib.__func__

    def from_torchlib(cls, *a, **k):  # a classmethod
        t = time.process_time()
        try:
            return registry(cls, *a, **k)
        finally:
            _add("0 torchlib registry", time.process_time() - t)

    _registration.ONNXRegistry.from_torchlib = classmethod(from_torchlib)
    to_proto = _onnx_program.ONNXProgram.model_proto.fget

    def model_proto(self):
        t = time.process_time()
        try:
            return to_proto(self)
        finally:
            _add("5 IR -> ModelProto", time.process_time() - t)

    _onnx_program.ONNXProgram.model_proto = property(model_proto)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("hf", type=Path)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    _, c, _ = hf_config_and_tokenizer(args.hf, ())
    _wrap_all()
    load = os.getloadavg()[0]
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    got = stamp.stamp_graph(c, args.dtype, graph.DEFAULT_OPSET)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.process_time()
    got.proto.SerializeToString()
    _add("9 serialization", time.process_time() - t)
    for label in sorted(TOTALS):
        print(f"{label:36s} {TOTALS[label]:6.2f} CPU-s")
    u, s = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    print(f"stamp_graph: {u + s:.2f} CPU-s (user {u:.2f}, sys {s:.2f}, "
          f"{r1.ru_minflt - r0.ru_minflt} page faults); traced layers "
          f"{stamp.trace_config(c)[0].n_layers}; load {load:.1f}")


if __name__ == "__main__":
    main()
