"""The shared KV-cache form made from the streamed float graph (export/ort_shared_cache.py
`stream_shared`: the stamped graph, its weights in model.onnx.data, rewritten without
loading them). Oracles: the shared form of the whole-traced graph of the same model
(`shared_graph(export_graph(...))`), compared node for node (tests/stamp_cases.py's
fingerprint: op, attributes, node name, every input traced back to graph inputs and
initializer values) and by onnxruntime's logits over a decode, bitwise; the artifact's own
verification and `scredge parity`'s tiers (SCR_SPEC section 5) on an exported folder."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from stamp_cases import CASES, canonical

from scredge.cli import main
from scredge.config import SCRConfig
from scredge.contract import ONNX_DATA_FILE, ONNX_FILE, TRT_ONNX_FILE
from scredge.export.graph import export_graph
from scredge.export.ort_shared_cache import shared_graph, stream_shared
from scredge.export.pipeline import cast_for_export, export_artifact
from scredge.export.stamp import stamp_graph
from scredge.export.stream_write import dedup_small, write_onnx
from scredge.ref import build_model
from scredge.runtime.generation import positions
from scredge.runtime.loaders import ort_session
from scredge.runtime.runners.ort_runner import OrtRunner
from scredge.runtime.shared_cache import SharedDecoder

OPSET = 18  # the float export's default; the fusions raise it to Attention's 23


def external(path) -> dict[str, tuple[str, int, int]]:
    """{initializer: (file, offset, length)} of a graph's external tensors."""
    proto = onnx.load(str(path), load_external_data=False)
    out = {}
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            e = {x.key: x.value for x in init.external_data}
            out[init.name] = (e["location"], int(e["offset"]), int(e["length"]))
    return out


def decode_logits(graph, c: SCRConfig) -> list[np.ndarray]:
    """Logits of every call of a shared decoder over 40 positions of two rows: a prefill
    of 5, single steps, a chunk of 12 (past a window of 16)."""
    runner = OrtRunner(ort_session(graph, "cpu", threads=1), c, np.float32)
    decoder = SharedDecoder(runner, 2)  # its default capacity: the window, or 256
    ids = np.random.default_rng(0).integers(0, c.vocab_size, (2, 40))
    out, s = [], 0
    while s < 40:
        e = s + {0: 5, 20: 12}.get(s, 1)
        out.append(decoder.step(ids[:, s:e], positions(s, 2, e - s)))
        s = e
    return out


# each case traces the model twice (whole, and the trace it is stamped from): one case
# runs by default, the others are slow (as in test_stamp.py)
@pytest.mark.parametrize("case", [pytest.param(k, marks=() if k == "scr-all"
                                               else pytest.mark.slow) for k in sorted(CASES)])
def test_streamed_shared_graph_equals_the_whole_traced_one(tmp_path, case, monkeypatch):
    c = SCRConfig.preset("tiny").with_(n_layers=5, **CASES[case])
    model = build_model(c, seed=2, gamma=0.3)
    whole, whole_counts = shared_graph(export_graph(cast_for_export(model, "float32"), OPSET), c)
    stamped = stamp_graph(c, "float32", OPSET)
    assert stamped is not None
    params = model.state_dict()
    dedup_small(stamped, params)
    write_onnx(stamped, params, tmp_path / ONNX_FILE, ONNX_DATA_FILE)
    concat = external(tmp_path / ONNX_FILE)

    read = []  # every tensor the rewrite reads from the data file: small constants only
    to_array = onnx.numpy_helper.to_array

    def spy(t, base_dir=""):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            read.append((t.name, list(t.dims)))
        return to_array(t, base_dir)

    monkeypatch.setattr(onnx.numpy_helper, "to_array", spy)
    counts = stream_shared(tmp_path, c)
    monkeypatch.undo()
    assert counts == whole_counts
    assert read and all(len(dims) == 1 for _, dims in read), read  # the norm weights

    got = onnx.load(str(tmp_path / ONNX_FILE))
    a, b = canonical(whole), canonical(got)
    assert a[2] == b[2]  # node names
    assert a[1] == b[1]  # outputs computed by the same nodes from the same values
    assert a[0] == b[0]
    for field in ("input", "output"):
        assert [v.name for v in getattr(whole.graph, field)] == [
            v.name for v in getattr(got.graph, field)]
    assert {(o.domain, o.version) for o in whole.opset_import} == {
        (o.domain, o.version) for o in got.opset_import}
    # one copy of the weights: the concat graph kept as is, the shared one reading the same
    # bytes of the same file, and every weight written read by it
    assert external(tmp_path / TRT_ONNX_FILE) == concat
    assert external(tmp_path / ONNX_FILE) == concat

    for x, y in zip(decode_logits(whole.SerializeToString(), c),
                    decode_logits(str(tmp_path / ONNX_FILE), c), strict=True):
        np.testing.assert_array_equal(x, y)


def test_streamed_shared_artifact_passes_parity(tmp_path, capsys):
    """`export --cache shared` (SCR on every layer, windowed): streamed (one data file both
    graphs read), verified at export, and every tier of `scredge parity` passes on it."""
    c = SCRConfig(vocab_size=256, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=64,
                  window=16, scr_layers=(0, 1, 2, 3))  # four layers: the fewest stamped
    out = export_artifact(build_model(c, seed=1, gamma=0.5, std=0.08), tmp_path / "shared",
                          cache="shared", keep_reference=False)  # the CLI default
    config = json.loads((out / "config.json").read_text())
    assert config["cache"] == {"ort": "shared", "trt": "concat"}
    assert config["export"]["external_data"] is True
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    assert files == sorted(["config.json", "manifest.json", ONNX_FILE, ONNX_DATA_FILE,
                            TRT_ONNX_FILE])
    assert external(out / ONNX_FILE) == external(out / TRT_ONNX_FILE)
    assert main(["parity", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and len(report["tiers"]) == 5
