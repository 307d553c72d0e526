"""The shared ("in-place") KV-cache form (SCR_SPEC v3 section 3): export/ort_shared_cache.py
and runtime/shared_cache.py.

Oracles: the float32 reference model (`scr_ref`) stepped with the same ids and absolute
positions, and the concat form of the same weights run by onnxruntime (its own decoder);
for batches, each prompt decoded alone (SCR_SPEC section 3: every row gets exactly the
logits it would get alone); for "no copy", the addresses of the bound buffers."""

from __future__ import annotations

import numpy as np
import pytest

from scredge.config import SCRConfig
from scredge.contract import (
    ATTENTION_MASK,
    CAPACITY,
    LENGTH_INPUTS,
    GraphIO,
    is_kv,
)
from scredge.export.graph import export_graph
from scredge.export.ort_shared_cache import shared_graph
from scredge.export.pipeline import cast_for_export
from scredge.export.verify import reference_stepper
from scredge.ref import build_model
from scredge.runtime.generation import positions, prefill_rows
from scredge.runtime.loaders import ort_session
from scredge.runtime.runners.ort_runner import OrtDecoder, OrtRunner
from scredge.runtime.shared_cache import SharedDecoder

TOL = 1e-4  # float32 reassociation in the fused kernels, logits of magnitude ~1-10


def _config(window):
    return SCRConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                     d_ff=128, window=window, scr_layers=(1,))


def _forms(window, seed=3, dtype="float32"):
    """(reference model, concat runner, shared runner, shared proto) of one small model."""
    c = _config(window)
    model = build_model(c, seed=seed).eval()
    plain = export_graph(cast_for_export(model, dtype))
    shared, _ = shared_graph(plain, c)

    def runner(proto):
        return OrtRunner(ort_session(proto.SerializeToString(), "cpu", threads=1), c,
                         np.float16 if dtype == "float16" else np.float32)

    return model, runner(plain), runner(shared), shared


@pytest.fixture(scope="module")
def windowed():
    return _forms(8)


@pytest.fixture(scope="module")
def unbounded():
    return _forms(None)


def test_graph_form(windowed):
    """The shared graph's I/O is the contract's, less attention_mask, plus the three length
    inputs; caches [B, Hk, C, Dh]; one GroupQueryAttention per layer, no concat of a cache."""
    _, _, runner, proto = windowed
    c = runner.config
    io = GraphIO.for_config(c)
    assert {i.name for i in proto.graph.input} == (
        {n for n in io.inputs if n != ATTENTION_MASK} | set(LENGTH_INPUTS))
    assert {o.name for o in proto.graph.output} == set(io.outputs)
    for v in [*proto.graph.input, *proto.graph.output]:
        if is_kv(v.name):
            assert v.type.tensor_type.shape.dim[2].dim_param == CAPACITY
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("GroupQueryAttention") == c.n_layers
    assert "Attention" not in ops and "Concat" not in ops
    assert runner.cache == "shared" and isinstance(runner.decoder(1), SharedDecoder)


def _calls(total: int, chunks: dict[int, int]):
    """(start, end) of the calls: decode steps, with the multi-token chunks given."""
    s = 0
    while s < total:
        e = min(total, s + chunks.get(s, 1))
        yield s, e
        s = e


@pytest.mark.parametrize("form", ["windowed", pytest.param("unbounded", marks=pytest.mark.slow)])
def test_matches_reference_and_concat_past_several_windows(form, request):
    """A prefill, decode steps, a chunk longer than the window, more steps: 60 positions
    of a W = 8 model (7 windows; the rows compact several times) or of an unbounded one
    (the buffer grows from 16): every call's logits equal the reference's and the concat
    form's, within 1e-4."""
    model, concat, shared, _ = request.getfixturevalue(form)
    B, total = 2, 60
    ids = np.random.default_rng(1).integers(0, 256, (B, total))
    ref = reference_stepper(model)
    cat = concat.decoder(B)
    assert isinstance(cat, OrtDecoder)
    dec = SharedDecoder(shared, B, capacity=16)
    for s, e in _calls(total, {0: 5, 30: 12}):
        x, pos = ids[:, s:e], positions(s, B, e - s)
        want = ref(x, pos)
        got = dec.step(x, pos).copy()
        assert np.abs(got - want).max() <= TOL, (s, e)
        assert np.abs(got - cat.step(x, pos)).max() <= TOL, (s, e)
    if form == "windowed":  # compacted: at most C tokens held, never the 60 seen
        assert dec.capacity == 16 and (dec.lengths <= 16).all()
    else:
        assert dec.capacity >= total and (dec.lengths == total).all()


def test_float16_matches_reference_and_concat_past_several_windows():
    """float16 (the default form for it too): its attention fuses through the graph's Casts;
    60 positions of a W = 8 model (prefill 5, a 12-token chunk, compactions), every call at
    the float16 logits tier of SCR_SPEC section 5 against the float32 reference and
    against the float16 concat form."""
    from scredge.tiers import compare_logits, logits_thresholds

    model, concat, shared, proto = _forms(8, dtype="float16")
    assert [n.op_type for n in proto.graph.node].count("GroupQueryAttention") == 2
    B, total = 2, 60
    ids = np.random.default_rng(1).integers(0, 256, (B, total))
    ref, cat = reference_stepper(model), concat.decoder(B)
    dec = SharedDecoder(shared, B, capacity=16)
    th = logits_thresholds("float16")
    for s, e in _calls(total, {0: 5, 30: 12}):
        x, pos = ids[:, s:e], positions(s, B, e - s)
        got = dec.step(x, pos).copy()
        for want in (ref(x, pos), cat.step(x, pos)):
            report = compare_logits(want, got, th)
            assert report.passed, (s, e, report.summary())


def _alone(runner, prompt, steps):
    """Greedy tokens and logits of one prompt decoded alone."""
    dec, last = prefill_rows(runner, [prompt])
    tokens, logits = [], []
    for k in range(steps):
        tok = int(np.argmax(last[0]))
        tokens.append(tok)
        last = dec.step(np.array([[tok]]), positions(len(prompt) + k, 1, 1))[:, -1].copy()
        logits.append(last[0])
    return tokens, np.stack(logits)


def test_unequal_batch_equals_each_prompt_alone_join_and_leave(windowed):
    """Prompts of 3, 11 and 6 tokens prefilled apart and joined (each into a free row, no
    padding), decoded greedily with their own positions; the middle row leaves after 4
    steps and a fourth prompt joins after 6: every row's logits equal its prompt alone."""
    _, _, runner, _ = windowed
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, 256, n) for n in (3, 11, 6, 9)]
    steps = 14
    alone = [_alone(runner, p, steps) for p in prompts]
    dec, last = prefill_rows(runner, prompts[:3])
    assert isinstance(dec, SharedDecoder) and dec.lengths.tolist() == [3, 11, 6]
    rows = [0, 1, 2]  # which prompt each batch row holds
    done = {r: 0 for r in rows}  # steps decoded per prompt
    toks = np.array([int(np.argmax(row)) for row in last])
    for k in range(steps):
        if k == 4:  # the middle row leaves
            keep = [i for i, p in enumerate(rows) if p != 1]
            dec.select(keep)
            rows, toks = [rows[i] for i in keep], toks[keep]
        if k == 6:  # a new prompt joins into a free row
            new, new_last = prefill_rows(runner, [prompts[3]])
            dec.join(new)
            rows.append(3)
            done[3] = 0
            toks = np.append(toks, int(np.argmax(new_last[0])))
        pos = np.array([len(prompts[p]) + done[p] for p in rows])
        out = dec.step(toks.reshape(-1, 1), positions(pos, len(rows), 1))[:, -1].copy()
        for i, p in enumerate(rows):
            want_tok, want_logits = alone[p]
            assert toks[i] == want_tok[done[p]]
            assert np.abs(out[i] - want_logits[done[p]]).max() <= TOL, (k, p)
            done[p] += 1
        toks = np.argmax(out, axis=-1)


def test_decode_step_copies_no_cache(windowed):
    """Decode steps between two compactions: the KV buffers are the same memory before and
    after (bound once, updated in place) and hold the new keys at each row's length."""
    _, _, runner, _ = windowed
    dec = SharedDecoder(runner, 2, capacity=16)
    dec.step(np.zeros((2, 3), np.int64), positions(0, 2, 3))
    name = next(iter(dec._kv))
    addr = dec._kv[name].ctypes.data
    before = dec._kv[name][:, :, :3].copy()
    for k in range(5):
        dec.step(np.full((2, 1), k, np.int64), positions(3 + k, 2, 1))
    assert dec._kv[name].ctypes.data == addr
    assert np.array_equal(dec._kv[name][:, :, :3], before)  # old keys untouched
    assert np.abs(dec._kv[name][:, :, 3:8]).sum() > 0  # the new ones written in place
    assert dec.lengths.tolist() == [8, 8]


def test_batching_core_over_shared_cache(windowed):
    """The batching core (Engine over runtime/batch.py) on the shared runner: prompts of
    unequal length past the window, greedy, each row's ids equal its prompt alone."""
    from scredge.runtime.engine import Engine

    _, _, runner, _ = windowed
    engine = Engine(runner)
    prompts = ["ab", "a longer prompt, past the window", "xyz12"]
    together = engine.generate(prompts, max_new_tokens=20, temperature=0.0)
    assert isinstance(runner.decoder(1), SharedDecoder)
    for prompt, row in zip(prompts, together):
        assert row.ids == engine.generate(prompt, max_new_tokens=20, temperature=0.0).ids


@pytest.mark.parametrize("cache", ["concat", "shared"])
@pytest.mark.parametrize("form", ["windowed", "unbounded"])
def test_chunked_prefill_equals_one_shot(form, cache, request):
    """Prompts of 37, 37, 20 and 5 tokens prefilled in one call per group and in chunks of
    7 and 3 (SCR_SPEC section 3: one graph serves prefill, decode and chunked prefill; a
    chunk longer than W-1 = 7 included), on both cache forms: the last-position logits
    agree within 1e-4 and the batching core's greedy ids over 12 more tokens are equal."""
    from scredge.runtime.batch import Batch, Request

    _, concat, shared, _ = request.getfixturevalue(form)
    runner = concat if cache == "concat" else shared
    rng = np.random.default_rng(4)
    prompts = [rng.integers(0, 256, n) for n in (37, 37, 20, 5)]
    whole_dec, whole = prefill_rows(runner, prompts, chunk=1000)
    whole_dec.release()

    def greedy(chunk):
        batch = Batch(runner, prefill_chunk=chunk)
        batch.admit([Request(p, max_tokens=12) for p in prompts])
        rows = list(batch.rows)
        while batch.rows:
            batch.step()
            batch.retire()
        return batch.prefill_chunks, [r.ids for r in rows]

    one_shot_chunks, want = greedy(1000)
    assert one_shot_chunks == 3  # one call per group of equal length
    for chunk in (7, 3):
        dec, got = prefill_rows(runner, prompts, chunk=chunk)
        dec.release()
        assert np.abs(got - whole).max() <= TOL, chunk
        chunks, ids = greedy(chunk)
        assert ids == want and chunks > one_shot_chunks, chunk
