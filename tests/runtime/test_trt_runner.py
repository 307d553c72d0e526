"""The TensorRT runner's binding, shape and profile logic against a fake engine, context and
CUDA layer that record every call (no GPU, no TensorRT). Oracles: SCR_SPEC section 3 (input
shapes, P' = min(P+T, W-1): a call's present.* are the next call's past.*), the two
profiles of `trt_profiles`, and the refusals of `trt_loader`."""

from __future__ import annotations

import numpy as np
import pytest
from fake_cuda import FakeCuda
from fake_trt import FakeEngine

from scredge.config import SCRConfig
from scredge.errors import ScredgeError
from scredge.runtime import trt_profiles as tp
from scredge.runtime.runners.trt_runner import TrtRunner
from scredge.runtime.trt_loader import mismatch, register_plugin

W16 = SCRConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                window=16, scr_layers=(0, 1))


@pytest.fixture
def runner():
    calls: list = []
    cuda = FakeCuda(calls)
    limits = tp.Limits.from_profiles(tp.profiles(W16, max_batch=2, max_prefill=8), W16)
    return TrtRunner(FakeEngine(cuda), W16, np.float32, limits, cuda)


def executes(calls):
    return [c for c in calls if c[0] == "execute"]


def test_prefill_then_decode(runner):
    calls = runner.cuda.calls
    dec = runner.decoder(2)
    ids = np.arange(10, dtype=np.int64).reshape(2, 5)
    logits = dec.step(ids, np.tile(np.arange(5), (2, 1)))
    assert logits.shape == (2, 5, 256) and (logits == 1).all()  # copied back from the device
    (_, shapes, addr0), = executes(calls)
    assert ("profile", tp.PREFILL) in calls
    assert shapes["input_ids"] == shapes["position_ids"] == (2, 5)
    assert shapes["past_key_values.1.value"] == (2, 2, 0, 8)
    assert shapes["scr_past.0.num"] == (2, 32) and shapes["scr_past.1.den"] == (2, 1)
    zeroed = {c[1] for c in calls if c[0] == "zero"}  # empty SCR carry before the first call
    assert zeroed == {addr0[f"scr_past.{i}.{k}"] for i in (0, 1) for k in ("num", "den")}
    assert dec.past == 5

    n = len(calls)
    logits = dec.step(np.array([[1], [2]]), np.array([[5], [5]]))
    assert logits.shape == (2, 1, 256) and (logits == 2).all()
    assert [c for c in calls[n:] if c[0] == "profile"] == [("profile", tp.DECODE)]
    assert not [c for c in calls[n:] if c[0] == "malloc"]  # nothing allocated per token
    (_, shapes, addr1), = executes(calls[n:])
    assert shapes["input_ids"] == (2, 1) and shapes["past_key_values.0.key"] == (2, 2, 5, 8)
    for i in (0, 1):  # this call reads what the last one wrote, and writes the other set
        for kv in ("key", "value"):
            assert addr1[f"past_key_values.{i}.{kv}"] == addr0[f"present.{i}.{kv}"]
            assert addr1[f"present.{i}.{kv}"] == addr0[f"past_key_values.{i}.{kv}"]
        assert addr1[f"scr_past.{i}.num"] == addr0[f"scr_present.{i}.num"]
    assert addr1["logits"] == addr0["logits"]

    n = len(calls)
    dec.step(np.array([[3], [4]]), np.array([[6], [6]]))
    assert not [c for c in calls[n:] if c[0] == "profile"]  # same phase: no switch
    (_, _, addr2), = executes(calls[n:])
    assert addr2["past_key_values.0.key"] == addr0["past_key_values.0.key"]
    downloads = [c for c in calls[n:] if c[0] in ("download", "upload")]
    assert [c[0] for c in downloads] == ["upload", "upload", "download"]  # only logits down
    assert downloads[-1][1] == addr0["logits"]


def test_cache_stays_at_window(runner):
    dec = runner.decoder(1)
    dec.step(np.zeros((1, 8), np.int64), np.arange(8).reshape(1, 8))
    for p in range(8, 30):
        dec.step(np.zeros((1, 1), np.int64), np.array([[p]]))
    assert dec.past == 15
    assert executes(runner.cuda.calls)[-1][1]["past_key_values.0.key"] == (1, 2, 15, 8)


def test_chunk_after_prefill_runs_token_by_token(runner):
    dec = runner.decoder(1)
    dec.step(np.zeros((1, 3), np.int64), np.arange(3).reshape(1, 3))
    logits = dec.step(np.zeros((1, 4), np.int64), np.arange(3, 7).reshape(1, 4))
    assert logits.shape == (1, 4, 256) and logits[0, :, 0].tolist() == [2, 3, 4, 5]
    assert [e[1]["past_key_values.0.key"][2] for e in executes(runner.cuda.calls)] == [
        0, 3, 4, 5, 6]
    assert dec.past == 7


def test_out_of_profile_requests_touch_nothing(runner):
    calls = runner.cuda.calls
    with pytest.raises(ScredgeError, match="batch exceeds"):
        runner.decoder(3)
    assert calls == []
    dec = runner.decoder(1)
    n = len(calls)
    with pytest.raises(ScredgeError, match="prompt longer"):
        dec.step(np.zeros((1, 9), np.int64), np.arange(9).reshape(1, 9))
    with pytest.raises(ScredgeError, match="decoder's batch"):
        dec.step(np.zeros((2, 1), np.int64), np.zeros((2, 1), np.int64))
    assert calls[n:] == [] and dec.past == 0


def test_stateless_infer(runner):
    from scredge.runtime.cache import empty_state

    feed = {"input_ids": np.zeros((1, 4), np.int64),
            "position_ids": np.arange(4).reshape(1, 4),
            "attention_mask": np.ones((1, 4), np.int64), **empty_state(W16, 1)}
    out = runner.infer(feed)
    assert out["logits"].shape == (1, 4, 256) and (out["logits"] == 1).all()
    assert out["present.1.key"].shape == (1, 2, 4, 8) and out["scr_present.0.den"].shape == (1, 1)
    assert ("profile", tp.PREFILL) in runner.cuda.calls
    assert runner.cuda.mem == {}  # every buffer freed
    with pytest.raises(ScredgeError, match="outside both"):
        runner.infer({**feed, **{k: np.zeros((1, 2, 3, 8), np.float32) for k in feed
                                 if k.startswith("past_")}})


def test_engine_mismatch_reasons():
    entry = {"backend": "tensorrt", "tensorrt": "10.3.0", "compute_capability": "8.7"}
    assert mismatch(entry, {"tensorrt": "10.3.0"}, (8, 7)) is None
    assert "10.16.0" in mismatch(entry, {"tensorrt": "10.16.0"}, (8, 7))
    assert "8.9" in mismatch(entry, {"tensorrt": "10.3.0"}, (8, 9))
    assert "not installed" in mismatch(entry, {"tensorrt": None}, (8, 7))
    portable = {"backend": "tensorrt_rtx", "tensorrt": "1.7.1.116", "compute_capability": None}
    assert mismatch(portable, {"tensorrt_rtx": "1.7.1.116"}, (8, 9)) is None


def test_missing_plugin_is_refused():
    plugin = {"name": "Realign", "namespace": "scr", "version": "1",
              "python": "scredge.plugins.realign.no_such_module"}
    with pytest.raises(ScredgeError, match="needs the TensorRT plugin scr::Realign v1"):
        register_plugin(object(), plugin)


def test_released_decoders_are_reused_in_the_empty_state(runner):
    """A generation's device state goes back to the runner: the next decoder of the same
    batch gets its context, stream and buffers, with P = 0 and the SCR carry zeroed again."""
    from scredge.runtime import Engine

    engine = Engine(runner)
    calls = runner.cuda.calls
    engine.generate([1, 2, 3], 20, temperature=0)
    assert len(runner.engine.contexts) == 1
    n = len(calls)
    engine.generate([4, 5], 20, temperature=0)
    new = calls[n:]
    assert len(runner.engine.contexts) == 1 and not [c for c in new if c[0] == "malloc"]
    first = next(c for c in new if c[0] == "execute")
    assert first[1]["input_ids"] == (1, 2) and first[1]["past_key_values.0.key"][2] == 0
    carry = {v for k, v in first[2].items() if k.startswith("scr_past.")}
    zeroed = {c[1] for c in new if c[0] == "zero"}
    assert zeroed == carry  # the carry the prefill reads is empty again


def test_the_pool_is_bounded_and_stale_handles_are_refused(runner):
    from scredge.runtime.runners import trt_runner

    held = [runner.decoder(1) for _ in range(trt_runner.MAX_IDLE_DECODERS + 1)]
    held.append(runner.decoder(2))
    states = [d._state for d in held]
    assert len({id(s) for s in states}) == len(held)  # in use: never shared
    for d in held:
        d.release()
    # the least recently released are freed first, whatever their batch
    assert runner._idle == states[-trt_runner.MAX_IDLE_DECODERS:]
    assert states[0].closed and states[1].closed  # evicted: freed at once
    reused = runner.decoder(1)
    assert reused._state is states[-2]  # the most recently released of batch 1
    stale = held[-2]  # the old handle to that same state
    stale.release()  # a second release: nothing happens
    assert reused._state not in runner._idle and len(runner._idle) == 3
    with pytest.raises(ScredgeError, match="released or closed"):
        stale.step(np.zeros((1, 1), np.int64), np.zeros((1, 1), np.int64))
    with pytest.raises(ScredgeError, match="released or closed"):
        stale.state()
    closed = runner.decoder(1)
    closed.close()  # freed now, never pooled, even if released after
    closed.release()
    assert all(not s.closed for s in runner._idle)
    reused.release()
    runner.close()
    assert runner._idle == [] and runner.cuda.mem == {}


def test_a_failed_generation_frees_its_decoder():
    """A call that fails mid-generation leaves the context in an unknown state: the
    decoder is freed, not pooled, and the error reaches the caller."""
    from scredge.runtime import Engine

    calls: list = []
    cuda = FakeCuda(calls)
    limits = tp.Limits.from_profiles(tp.profiles(W16, max_batch=2, max_prefill=8), W16)
    runner = TrtRunner(FakeEngine(cuda, fail_at=5), W16, np.float32, limits, cuda)
    with pytest.raises(ScredgeError, match="TensorRT execution failed"):
        Engine(runner).generate([1, 2, 3], 20, temperature=0)
    assert runner._idle == [] and cuda.mem == {}


def test_a_closed_generator_gives_its_decoder_back_once(runner):
    from scredge.runtime.generation import Generator

    gen = Generator(runner)
    gen.append([1, 2, 3])
    gen.next_token()
    state = gen.decoder._state
    gen.close()
    gen.close()
    assert runner._idle == [state] and gen.is_done()
    with pytest.raises(ScredgeError, match="closed generator"):
        gen.append([4])
    with pytest.raises(ScredgeError, match="closed generator"):
        gen.next_token()


def test_join_and_leave_rebind_state_and_mask(runner):
    """SCR_SPEC section 3 (v2) on the device path: a join uploads the left-padded state into
    a decoder state of the new batch size, the decode call gets attention_mask [B, P+1] with
    0 in the shorter row's pads, and a row that leaves takes an idle state of the smaller
    batch (nothing allocated). Oracle: the host-side join of `runtime.cache`."""
    calls = runner.cuda.calls
    a, b = runner.decoder(1), runner.decoder(1)
    a.step(np.zeros((1, 3), np.int64), np.arange(3).reshape(1, 3))
    b.step(np.zeros((1, 5), np.int64), np.arange(5).reshape(1, 5))
    a.join(b)
    assert b.released and a.batch == 2 and a.past == 5 and a.padded
    n = len(calls)
    a.step(np.array([[1], [2]]), np.array([[3], [5]]))
    (_, shapes, addr), = executes(calls[n:])
    assert shapes["attention_mask"] == (2, 6) and shapes["past_key_values.0.key"] == (2, 2, 5, 8)
    sent = np.frombuffer(runner.cuda.mem[addr["attention_mask"]][:2 * 6 * 8], np.int64)
    np.testing.assert_array_equal(sent.reshape(2, 6), [[0, 0, 1, 1, 1, 1], [1] * 6])
    mallocs = len([c for c in calls if c[0] == "malloc"])
    a.leave([1])
    assert a.batch == 1 and a.past == 4 and not a.padded  # its pads left with the long row
    assert len([c for c in calls if c[0] == "malloc"]) == mallocs  # an idle batch-1 state
    n = len(calls)
    a.step(np.array([[1]]), np.array([[4]]))
    (_, shapes, _), = executes(calls[n:])
    assert shapes["attention_mask"] == (1, 5) and shapes["input_ids"] == (1, 1)
    a.release()
