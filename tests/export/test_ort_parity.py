"""onnxruntime running the exported graph vs the float32 reference model.
Oracle: `scr_ref` (SCR_SPEC section 5): float32 within 1e-4; float16 at the logits tier."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from scredge.config import SCRConfig
from scredge.export.graph import export_graph
from scredge.export.pipeline import cast_for_export
from scredge.ref import build_model
from scredge.runtime.cache import empty_state
from scredge.tiers import compare_logits, logits_thresholds

BASE = SCRConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                 window=5, scr_layers=(0, 1))
SPLITS = [13, 1, 10, 1, 1, 1]  # chunked prefill, then decode steps: 27 tokens


@pytest.fixture(scope="module", params=[
    ("float32", 5), ("float32", 64), ("float32", None), ("float16", 5), ("float16", None)],
    ids=lambda p: f"{p[0]}-window{p[1]}")
def exported(request, tmp_path_factory):
    dtype, window = request.param
    model = build_model(BASE.with_(window=window), seed=3, gamma=0.5)
    path = tmp_path_factory.mktemp("parity") / "model.onnx"
    onnx.save(export_graph(cast_for_export(model, dtype)), str(path))
    return dtype, model, path


def run_both(model, decoder, dtype, splits, batch=2):
    ids = torch.randint(0, 256, (batch, sum(splits)), generator=torch.Generator().manual_seed(7))
    state = empty_state(model.config, batch, np.float16 if dtype == "float16" else np.float32)
    ref_state, start, ref_out, got_out = None, 0, [], []
    for size in splits:
        chunk = ids[:, start:start + size]
        pos = torch.arange(start, start + size).expand(batch, size)
        with torch.no_grad():
            ref, ref_state = model(chunk, pos, ref_state)
        outs, state = decoder(chunk.numpy(), pos.numpy(), state)
        ref_out.append(ref.numpy())
        got_out.append(outs["logits"])
        start += size
        for i in model.config.scr_layers:  # the SCR carry matches too
            np.testing.assert_allclose(outs[f"scr_present.{i}.num"], ref_state.scr_num[i].numpy(),
                                       rtol=1e-3 if dtype == "float16" else 1e-5, atol=1e-3)
        kv = outs["present.0.key"]
        assert kv.shape == tuple(ref_state.keys[0].shape) and kv.dtype == np.dtype(dtype)
    return np.concatenate(ref_out, 1), np.concatenate(got_out, 1)


def test_prefill_decode_and_chunked_prefill(exported, ort_decoder):
    dtype, model, path = exported
    decoder = ort_decoder(path)
    ref, got = run_both(model, decoder, dtype, SPLITS)
    assert got.dtype == np.float32
    if dtype == "float32":
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    report = compare_logits(ref, got, logits_thresholds(dtype))
    assert report.passed, report.summary()


def test_one_call_equals_the_split_calls(exported, ort_decoder):
    """Oracle here: the graph itself, called once over all 27 tokens."""
    dtype, model, path = exported
    decoder = ort_decoder(path)
    _, split = run_both(model, decoder, dtype, SPLITS)
    _, whole = run_both(model, decoder, dtype, [sum(SPLITS)])
    tol = 2e-2 if dtype == "float16" else 1e-5
    np.testing.assert_allclose(split, whole, atol=tol, rtol=0)


def test_joined_rows_with_attention_mask_equal_each_row_alone(exported, ort_decoder):
    """SCR_SPEC section 3 (v2). Oracle: `scr_ref` running each prompt alone. The graph
    prefills prompts of 3 and 9 tokens apart; their states are joined (the shorter cache
    left-padded, mask 0 there) and 8 decode steps run as one batch, each row at its own
    positions, past the window where it has one."""
    from scredge.runtime.cache import HostState, join_states, trim_mask

    dtype, model, path = exported
    if dtype != "float32":
        pytest.skip("float32 shows the mask exactly; float16 adds nothing here")
    decoder = ort_decoder(path)
    c, gen = model.config, torch.Generator().manual_seed(11)
    prompts = [torch.randint(0, 256, (1, n), generator=gen) for n in (3, 9)]
    steps = torch.randint(0, 256, (2, 8), generator=gen)
    alone, parts = [], []
    for b, p in enumerate(prompts):
        pos = torch.arange(p.shape[1])[None]
        with torch.no_grad():
            ref, st = model(p, pos)
            want = [ref[0, -1].numpy()]
            for k in range(steps.shape[1]):
                ref, st = model(steps[b:b + 1, k:k + 1], torch.tensor([[p.shape[1] + k]]), st)
                want.append(ref[0, -1].numpy())
        alone.append(np.stack(want))
        outs, state = decoder(p.numpy(), pos.numpy(), empty_state(c, 1))
        np.testing.assert_allclose(outs["logits"][0, -1], alone[b][0], atol=1e-4, rtol=0)
        parts.append(HostState(state, np.ones((1, state["past_key_values.0.key"].shape[2]),
                                              np.int64)))
    joined = join_states(parts)
    state, mask = joined.arrays, joined.mask
    assert (mask == 0).any(), "the shorter row must be padded"
    position = np.array([[3], [9]])
    for k in range(steps.shape[1]):
        full = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
        outs, state = decoder(steps[:, k:k + 1].numpy(), position + k, state, full)
        mask = trim_mask(full, state["past_key_values.0.key"].shape[2])
        for b in range(2):
            np.testing.assert_allclose(outs["logits"][b, -1], alone[b][k + 1], atol=1e-4,
                                       rtol=0)
