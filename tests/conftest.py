"""Shared fixtures: tiny configs and fixed seeds. Every test names its oracle."""

from __future__ import annotations

import pytest

from scredge.config import SCRConfig

# Smaller than the `tiny` preset so the whole suite stays fast on two cores.
MICRO = SCRConfig(
    vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
    window=8, scr_layers=(0, 1),
)


@pytest.fixture
def micro() -> SCRConfig:
    return MICRO


@pytest.fixture(scope="session")
def tiny_opset21():
    """The shipped `tiny` (reference model, float32 ONNX graph at opset 21), exported once per
    session: the starting point of the quantized graphs (export/quantize.py)."""
    from scredge.export.graph import export_graph
    from scredge.export.pipeline import cast_for_export
    from scredge.export.quantize import QUANT_OPSET
    from scredge.export.sources import from_pretrained

    model = from_pretrained("tiny").model
    return model, export_graph(cast_for_export(model, "float32"), QUANT_OPSET)


@pytest.fixture(scope="session")
def tiny_quantized(tiny_opset21, tmp_path_factory):
    """{bits: folder}: int8 and int4 artifacts of `tiny` through export_artifact (SCR_SPEC
    section 4), with the session's float graph standing in for a second torch export."""
    import onnx

    from scredge.export import pipeline
    from scredge.export.quantize import QuantSpec

    model, proto = tiny_opset21

    def graph(_model, _opset):
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        return copy

    root = tmp_path_factory.mktemp("quantized")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "export_graph", graph)
        return {bits: pipeline.export_artifact(model, root / f"int{bits}",
                                               quantize=QuantSpec(bits)) for bits in (8, 4)}
