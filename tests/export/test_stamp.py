"""The stamped graph (export/stamp.py, weights written by export/stream_write.py) against the
graph a full trace of the same model gives. Oracle: `graph.export_graph` of the whole model,
compared node for node (op, attributes, node name, and every input traced back through
the graph to graph inputs and initializer values), and onnxruntime's logits of both."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from stamp_cases import CASES, canonical

from scredge.artifact import sha256_file
from scredge.config import SCRConfig
from scredge.export import stamp_pair
from scredge.export.graph import export_graph
from scredge.export.pipeline import cast_for_export
from scredge.export.stamp import stamp_graph, trace_config
from scredge.export.stream_write import dedup_small, write_onnx
from scredge.ref import build_model


def run(path, c: SCRConfig, dtype: str) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    kv = np.float16 if dtype == "float16" else np.float32
    feeds = {"input_ids": rng.integers(0, c.vocab_size, (2, 5)),
             "position_ids": np.tile(np.arange(3, 8), (2, 1)),
             "attention_mask": np.ones((2, 8), np.int64)}
    for i in s.get_inputs():
        if i.name not in feeds:
            shape = [2 if d == "batch" else 3 if isinstance(d, str) else d for d in i.shape]
            dt = np.float32 if i.name.startswith("scr_") else kv
            feeds[i.name] = rng.standard_normal(shape).astype(dt) * 0.1 + (
                1.0 if i.name.endswith("den") else 0.0)
    return s.run(["logits"], feeds)[0]


# each case traces the model twice (whole, and the 3-layer trace it is stamped from): one
# case runs by default, the others are slow. float16 with SCR layers: Realign's relevance
# and gate stay float32 but were rounded through float16 (pipeline.cast_for_export), which
# the stamped weights must reproduce (stamp.Recipe's "h")
PARAMS = [pytest.param(case, dtype, marks=() if (case, dtype) == ("scr-all", "float32")
                       else pytest.mark.slow)
          for case in sorted(CASES) for dtype in ("float32", "float16")]


@pytest.mark.parametrize(("case", "dtype"), PARAMS)
def test_stamped_graph_equals_the_full_trace(tmp_path, case, dtype):
    c = SCRConfig.preset("tiny").with_(n_layers=5, **CASES[case])
    model = build_model(c, seed=2, gamma=0.3)
    full = export_graph(cast_for_export(model, dtype), 18)
    onnx.save(full, str(tmp_path / "full.onnx"))
    stamped = stamp_graph(c, dtype, 18)
    assert stamped is not None
    # one trace, of the fewest layers its kinds allow (stamp_cases: 4 for SCR at the ends)
    assert stamped.traced_layers == (4 if case == "scr-ends-qwen2-window" else 2)
    params = model.state_dict()
    dedup_small(stamped, params)
    entry = write_onnx(stamped, params, tmp_path / "stamped.onnx", "stamped.onnx.data")
    assert entry["sha256"] == sha256_file(tmp_path / "stamped.onnx.data")  # hashed as written
    onnx.checker.check_model(str(tmp_path / "stamped.onnx"), full_check=True)
    got = onnx.load(str(tmp_path / "stamped.onnx"))
    a, b = canonical(full), canonical(got)
    assert a[2] == b[2]  # node names
    assert a[1] == b[1]  # outputs computed by the same nodes from the same values
    assert a[0] == b[0]
    assert [v.name for v in full.graph.input] == [v.name for v in got.graph.input]
    assert [v.name for v in full.graph.output] == [v.name for v in got.graph.output]
    np.testing.assert_array_equal(run(tmp_path / "full.onnx", c, dtype),
                                  run(tmp_path / "stamped.onnx", c, dtype))


def test_trace_config_traces_two_layers_only_when_all_layers_are_of_one_kind():
    """Oracle: the layer kinds of each config, written out by hand."""
    tiny = SCRConfig.preset("tiny")
    for scr, layout, real in [((), (), [0, 7]), (tuple(range(8)), (0, 1), [0, 7]),
                              ((0,), (0,), [0, 1, 7]), ((7,), (3,), [0, 1, -1, 7]),
                              ((0, 7), (0, 3), [0, 1, -1, 7])]:
        traced, got = trace_config(tiny.with_(n_layers=8, scr_layers=scr))
        assert (traced.scr_layers, got, traced.n_layers) == (layout, real, len(real))
    traced, got = trace_config(tiny.with_(n_layers=8, scr_layers=()), two=False)
    assert (traced.n_layers, got) == (3, [0, 1, 7])
    assert trace_config(tiny.with_(n_layers=8, scr_layers=(2,))) is None


def test_trace_config_traces_the_vocabulary_and_mlp_width_as_sizes_the_graph_has_nowhere_else():
    """The traced model is narrow (its parameters were most of the trace child's memory);
    each stand-in is set back to one real size by the stamp, so it may equal no other size
    of the graph. Oracle: the config's sizes, listed by hand."""
    c = SCRConfig.preset("tiny").with_(n_layers=8, d_model=1024, n_heads=8, n_kv_heads=1,
                                      d_ff=1009 * 3, window=1012, scr_layers=())
    traced, _ = trace_config(c)
    stand_ins = {traced.vocab_size, traced.d_ff}
    sizes = {c.d_model, c.d_ff, c.head_dim, c.n_heads, c.n_kv_heads, c.window - 1, c.window,
             c.window + 1}
    assert len(stand_ins) == 2 and not stand_ins & sizes
    assert traced.d_ff < c.d_ff and traced.vocab_size < 4000
    assert (traced.d_model, traced.n_heads, traced.n_kv_heads, traced.window) == (
        c.d_model, c.n_heads, c.n_kv_heads, c.window)


@pytest.mark.slow  # three traces (20 s); no model exported by the tests falls back any more
def test_a_two_layer_trace_that_does_not_pair_is_traced_again_with_three(monkeypatch):
    """Oracle: the graph stamped from the 3-layer trace when the 2-layer pairing fails is
    the one stamped from the 2-layer trace, node for node (which test above holds to the
    full trace)."""
    c = SCRConfig.preset("tiny").with_(n_layers=5, **CASES["plain-untied"])
    two = stamp_graph(c, "float32", 18)
    traced = []

    def failing(s):
        traced.append(len(s.real))
        raise stamp_pair._CannotStamp("forced")

    monkeypatch.setattr(stamp_pair, "_match_before", failing)
    three = stamp_graph(c, "float32", 18)
    assert traced == [2] and three is not None
    a, b = (sorted((n.op_type, n.name) for n in g.proto.graph.node) for g in (two, three))
    assert a == b
    assert sorted(two.recipes.values(), key=repr) == sorted(three.recipes.values(), key=repr)


def test_a_float16_model_of_one_layer_kind_is_stamped_from_one_two_layer_trace():
    """Regression: in a float16 trace the position ids' Cast (a model-level node that only
    layer 0 reads) read alike the first norm's Cast, took its place in the pairing, and
    every float16 export was traced twice (2 layers, then 3). Oracle: the trace the graph
    was stamped from; the graph's equality with a full trace is the slow float16 cases
    above."""
    c = SCRConfig.preset("tiny").with_(n_layers=5, **CASES["plain-untied"])
    assert stamp_graph(c, "float16", 18).traced_layers == 2
