"""onnxruntime's fused kernels in the onnxruntime form (export/ort_fusions.py,
export/ort_attention.py).

Oracle: the same quantized graph before the rewrite (onnxruntime's quantizer output, the
graph the quantized tier was first calibrated on), run by onnxruntime on the same feeds:
prefill of rows at different positions, decode over a left-padded cache (a joined batch),
and a window-full cache that is trimmed. Tolerance 1e-4 on logits of magnitude ~1-10
(float32 reassociation inside the fused kernels), caches and SCR carries likewise.

Both graphs run here with float activations in MatMulNBits (accuracy_level 0): at the
artifact's level 4 onnxruntime rounds each activation block to int8, and a 1e-6 change of
an input can move one rounding step, which later layers grow to ~1e-2 on the logits; that
is the int8 path's own noise, not the rewrite's, and the quantized tier at export judges
it on the artifact's real graph."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx_graphs import copy_model

from scredge.config import RopeScaling, SCRConfig
from scredge.contract import GraphIO
from scredge.export.graph import export_graph
from scredge.export.ort_fusions import fuse_for_onnxruntime
from scredge.export.quantize import (
    QUANT_OPSET,
    QuantSpec,
    materialize_tied_head,
    quantize_ort,
    weight_matmuls,
)
from scredge.ref import build_model

# every head its own KV head, no window, q/k/v biases, scaled rope, SCR in one layer
PLAIN = SCRConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=128,
                  window=None, scr_layers=(1,), attention_bias=True,
                  rope_scaling=RopeScaling("linear", 2.0))


def _forms(config, float_proto):
    """(unfused, fused, counts) onnxruntime forms of one int8 quantization."""
    base = copy_model(float_proto)
    materialize_tied_head(base)
    unfused = quantize_ort(base, QuantSpec(8), weight_matmuls(base))
    for node in unfused.graph.node:  # float activations: see the module docstring
        for a in node.attribute:
            if node.op_type == "MatMulNBits" and a.name == "accuracy_level":
                a.i = 0
    fused = copy_model(unfused)
    counts = fuse_for_onnxruntime(fused, config)
    return unfused, fused, counts


@pytest.fixture(scope="module")
def tiny_forms(tiny_opset21):
    model, proto = tiny_opset21
    return (model.config, *_forms(model.config, proto))


@pytest.fixture(scope="module")
def plain_forms():
    return (PLAIN, *_forms(PLAIN, export_graph(build_model(PLAIN, seed=3), QUANT_OPSET)))


def _session(proto):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _feed(config, rng, batch, new, past, first_positions, pads=()):
    """Random ids and caches; row b at positions first_positions[b] + past + (0..new-1);
    pads[b] leading cache slots of row b marked as pads."""
    io = GraphIO.for_config(config)
    feed = {"input_ids": rng.integers(0, config.vocab_size, (batch, new), dtype=np.int64),
            "position_ids": np.stack([np.arange(new) + past + f for f in first_positions]
                                     ).astype(np.int64)}
    mask = np.ones((batch, past + new), np.int64)
    for b, n in enumerate(pads):
        mask[b, :n] = 0
    feed["attention_mask"] = mask
    for name in io.inputs:
        if name.startswith("past_key_values"):
            feed[name] = rng.standard_normal(
                (batch, config.n_kv_heads, past, config.head_dim)).astype(np.float32)
        elif name.endswith(".num"):
            feed[name] = rng.standard_normal((batch, config.d_model)).astype(np.float32)
        elif name.endswith(".den"):
            feed[name] = rng.uniform(0.5, 2.0, (batch, 1)).astype(np.float32)
    return feed


def _same_outputs(unfused, fused, feed):
    a, b = _session(unfused), _session(fused)
    names = [o.name for o in a.get_outputs()]
    assert names == [o.name for o in b.get_outputs()]
    for name, x, y in zip(names, a.run(None, feed), b.run(None, feed)):
        assert x.shape == y.shape, name
        np.testing.assert_allclose(y, x, rtol=0, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("forms", ["tiny_forms", "plain_forms"])
def test_every_block_is_fused(forms, request):
    """Counts follow from the config: 2L+1 norms (2L after a residual sum), 2L rotary,
    q/k/v and gate/up packed (5L matrices), L attention blocks; none of the unfused ops
    is left, and the ONNX domain is at the Attention op's opset."""
    config, _, fused, counts = request.getfixturevalue(forms)
    L = config.n_layers
    assert (counts.rms_norm, counts.skip_norm, counts.rotary, counts.packed_matmuls,
            counts.attention) == (2 * L + 1, 2 * L, 2 * L, 5 * L, L)
    ops = {n.op_type for n in fused.graph.node}
    assert not ops & {"Softmax", "Pow", "Reciprocal", "Neg", "Transpose"}
    assert sum(n.op_type == "Attention" for n in fused.graph.node) == L
    assert max(o.version for o in fused.opset_import if o.domain == "") >= 23


@pytest.mark.parametrize("forms", ["tiny_forms", "plain_forms"])
def test_prefill_matches_the_unfused_graph(forms, request, rng):
    """Two rows at different absolute positions, no cache (P = 0), T = 9."""
    config, unfused, fused, _ = request.getfixturevalue(forms)
    _same_outputs(unfused, fused, _feed(config, rng, 2, 9, 0, [0, 17]))


@pytest.mark.parametrize("forms", ["tiny_forms", "plain_forms"])
def test_joined_batch_decode_matches_the_unfused_graph(forms, request, rng):
    """A joined batch: row 1's first 5 cache slots are pads (mask 0), P = 12; one decode
    step and a 3-token chunk."""
    config, unfused, fused, _ = request.getfixturevalue(forms)
    for new in (1, 3):
        _same_outputs(unfused, fused, _feed(config, rng, 2, new, 12, [0, 30], pads=(0, 5)))


def test_window_full_cache_matches_the_unfused_graph(tiny_forms, rng):
    """`tiny` (window 128, 4 heads over 2 KV heads): P = W-1, so the new keys push the
    oldest out and `present` is trimmed; one step and a 4-token chunk."""
    config, unfused, fused, _ = tiny_forms
    past = config.window - 1
    for new in (1, 4):
        _same_outputs(unfused, fused, _feed(config, rng, 1, new, past, [200]))


def test_a_subgraph_that_differs_is_left_alone():
    """Oracle: the rewrite's own rule (only exact matches change). x^3 in place of x^2 is
    not RMSNorm: the graph comes back node for node as it went in."""
    from onnx import TensorProto, helper, numpy_helper

    consts = {"three": np.array(3.0, np.float32), "eps": np.array(1e-5, np.float32),
              "axes": np.array([-1], np.int64), "w": np.ones(8, np.float32)}
    nodes = [helper.make_node("Pow", ["x", "three"], ["p"]),
             helper.make_node("ReduceMean", ["p", "axes"], ["m"], keepdims=1),
             helper.make_node("Add", ["m", "eps"], ["a"]),
             helper.make_node("Sqrt", ["a"], ["s"]),
             helper.make_node("Reciprocal", ["s"], ["r"]),
             helper.make_node("Mul", ["x", "r"], ["xr"]),
             helper.make_node("Mul", ["w", "xr"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    before = proto.SerializeToString()
    counts = fuse_for_onnxruntime(proto, PLAIN)
    assert counts.rms_norm == counts.rotary == counts.attention == 0
    assert proto.SerializeToString() == before
