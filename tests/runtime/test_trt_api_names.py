"""The fakes the TensorRT runner is tested against call only what the real TensorRT Python
API has. Every public method of the recording fakes (tests/fake_trt.py) and of the
onnxruntime-emulated context (tools/gpu_check_runner.py) must exist on the real class, with
the same number of parameters where the binding states one signature. Oracle: the
`tensorrt_rtx` bindings, which share these classes' names and signatures with TensorRT
10.x's `tensorrt` (installed in CI by the dev extra)."""

from __future__ import annotations

import inspect
import re

import pytest
from fake_trt import FakeContext, FakeEngine
from scripts import load_script

trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu13 (dev extra)")


def public_methods(cls) -> dict[str, int]:
    """name -> number of parameters after self."""
    return {n: len(inspect.signature(f).parameters) - 1 for n, f in vars(cls).items()
            if callable(f) and not n.startswith("_")}


def binding_arity(real_cls, name: str) -> int | None:
    """Parameters after self in the binding's one signature; None when it is overloaded."""
    first = (getattr(real_cls, name).__doc__ or "").strip().splitlines()[0]
    if "(*args, **kwargs)" in first:
        return None
    params = re.match(rf"{name}\((.*)\)", first).group(1)
    return len([p for p in params.split(", ") if p]) - 1


@pytest.mark.parametrize(("fake", "real"), [
    (FakeContext, "IExecutionContext"),
    (FakeEngine, "ICudaEngine"),
    ("OrtBackedContext", "IExecutionContext"),
    ("OrtBackedEngine", "ICudaEngine"),
])
def test_fakes_match_the_real_bindings(fake, real):
    if isinstance(fake, str):
        fake = getattr(load_script("tools/gpu_check_runner.py"), fake)
    real_cls = getattr(trt, real)
    methods = public_methods(fake)
    assert methods, fake
    for name, n_params in methods.items():
        assert hasattr(real_cls, name), f"{fake.__name__}.{name} is not {real}.{name}"
        arity = binding_arity(real_cls, name)
        if arity is not None:
            assert n_params == arity, f"{fake.__name__}.{name} takes {n_params}, {real} {arity}"


def test_runner_calls_outside_the_fakes_exist():
    """Calls the runner and loader make that no fake defines."""
    assert binding_arity(trt.IExecutionContext, "is_stream_capturable") == 1
    assert binding_arity(trt.Runtime, "get_engine_validity") == 1
    assert hasattr(trt.Runtime, "deserialize_cuda_engine")
    assert binding_arity(trt.ICudaEngine, "create_runtime_config") == 0
    assert hasattr(trt.IRuntimeConfig, "cuda_graph_strategy")
    assert trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE is not None
    assert {"VALID", "INVALID"} <= set(trt.EngineValidity.__members__)
    assert hasattr(trt, "EngineInvalidityDiagnostics")
