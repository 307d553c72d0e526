"""export/quant_store.py: a quantized export reads the streamed float graph one weight at a
time and stores each float tensor once per folder. Oracles: SCR_SPEC v3 section 4 (weights
never stored twice in one folder when they can be shared; the TensorRT graph may keep a
float table), onnx's own external-data loader (what onnxruntime and TensorRT read), and
the float graph's values as numpy_helper reads them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from scredge.contract import ONNX_DATA_FILE, ONNX_FILE, TRT_ONNX_FILE  # noqa: E402
from scredge.export.quant_store import INLINE_BYTES, SOURCE_FILE, FloatSource  # noqa: E402


def _external(folder: Path, graph: str) -> dict[str, tuple[str, int, int]]:
    proto = onnx.load(str(folder / graph), load_external_data=False)
    out = {}
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            e = {x.key: x.value for x in init.external_data}
            out[init.name] = (e["location"], int(e.get("offset", 0)), int(e["length"]))
    return out


def test_both_forms_share_their_float_tensors_and_store_nothing_twice(tiny_int4_concat):
    """Every tensor of the folder's data files is written once: the same bytes never sit at
    two places, the TensorRT form's norms are read from the onnxruntime form's file, and
    both graphs load whole through onnx's loader. (A `--cache concat` export: the streamed
    float graph; a shared-cache export traces the graph whole, export/pipeline.py.)"""
    folder = tiny_int4_concat
    ort, trt = _external(folder, ONNX_FILE), _external(folder, TRT_ONNX_FILE)
    shared = [n for n, where in trt.items() if where[0] == ONNX_DATA_FILE]
    assert shared and all(trt[n] == ort[n] for n in shared)
    assert any("norm" in n for n in shared)
    places: dict[str, set] = {}
    for graph in (ort, trt):
        for location, offset, length in graph.values():
            with open(folder / location, "rb") as f:
                f.seek(offset)
                digest = hashlib.sha256(f.read(length)).hexdigest()
            places.setdefault(digest, set()).add((location, offset))
    twice = {d: p for d, p in places.items() if len(p) > 1}
    assert not twice, twice
    assert not (folder / SOURCE_FILE).exists()
    for graph in (ONNX_FILE, TRT_ONNX_FILE):
        onnx.load(str(folder / graph))  # every external reference resolves
    # and so from the verified bytes the TensorRT build parses (runtime.loaders)
    from scredge.builder.trt_build import verified_onnx
    from scredge.runtime.loaders import open_artifact

    built = verified_onnx(open_artifact(folder), TRT_ONNX_FILE)
    assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in built.graph.initializer)


def test_the_lazy_float_graph_reads_the_values_the_whole_graph_holds(tmp_path, tiny_opset21):
    """FloatSource.read of each initializer of a graph saved with external data equals
    numpy_helper's value of the graph held whole; the tied head reads the embedding
    transposed without a copy in the graph."""
    from scredge.export.plan_graphs import prepared_base

    _, proto = tiny_opset21
    written = onnx.ModelProto()
    written.CopyFrom(proto)  # save_model makes its tensors external in place
    onnx.save_model(written, str(tmp_path / ONNX_FILE), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=ONNX_DATA_FILE,
                    size_threshold=INLINE_BYTES)
    light, source = FloatSource.open(tmp_path, ONNX_FILE, ONNX_DATA_FILE)
    whole = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    lazy = [i for i in light.graph.initializer if source.is_lazy(i)]
    assert lazy
    for init in light.graph.initializer:
        np.testing.assert_array_equal(source.read(init), whole[init.name])
    base = prepared_base(light, source)
    head = next(i for i in base.graph.initializer if i.name in source.transposed)
    assert not head.raw_data
    table = source.transposed[head.name]
    np.testing.assert_array_equal(source.read(head), whole[table].T)
    source.close()
    assert not (tmp_path / SOURCE_FILE).exists()
