"""CUDA-graph replay of the TensorRT decoder's steady decode step (runners/trt_graphs),
against the recording fakes: stream capture records the engine's run with the shapes and
addresses bound at capture, and a host copy or sync on a capturing stream fails, as on a
GPU. Oracles: TensorRT's capture rules (one uncaptured run per address map after a shape
change, nothing but the engine inside the capture, always end the capture), SCR_SPEC
section 3 (set k's call reads set k and writes set 1-k), and the uncaptured decoder's
own calls. End-to-end token parity with graphs on: test_trt_runner_device_path."""

from __future__ import annotations

import numpy as np
import pytest
from fake_cuda import FakeCuda
from fake_trt import FakeEngine

from scredge.config import SCRConfig
from scredge.runtime import trt_profiles as tp
from scredge.runtime.runners.trt_graphs import CudaGraphMode
from scredge.runtime.runners.trt_runner import TrtRunner
from scredge.runtime.trt_loader import graph_setup

W16 = SCRConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                window=16, scr_layers=(0, 1))


def make_runner(mode=CudaGraphMode.CAPTURE, config=W16, refuse=False, capturable=None,
                **limits):
    cuda = FakeCuda([])
    lim = tp.Limits.from_profiles(tp.profiles(config, max_batch=2, max_prefill=8, **limits),
                                  config)
    engine = FakeEngine(cuda, refuse_capture=refuse, capturable=capturable)
    return TrtRunner(engine, config, np.float32, lim, cuda, cuda_graph=mode)


def decode(dec, start, steps):
    """Greedy-free decode: feed token 0 at positions start..start+steps-1; logits [steps]."""
    return [float(dec.step(np.zeros((dec.batch, 1), np.int64),
                           np.full((dec.batch, 1), p))[0, 0, 0])
            for p in range(start, start + steps)]


def kinds(calls, *names):
    return [c for c in calls if c[0] in names]


def test_steady_steps_are_replayed_from_two_graphs():
    runner = make_runner()
    calls = runner.cuda.calls
    dec = runner.decoder(1)
    dec.step(np.zeros((1, 8), np.int64), np.arange(8).reshape(1, 8))  # P = 8
    decode(dec, 8, 7)  # P grows to 15 = W-1: shapes change every call, nothing captured
    assert kinds(calls, "begin_capture") == [] and dec.past == 15
    n = len(calls)
    logits = decode(dec, 15, 10)  # steady: P stays 15
    new = calls[n:]
    # one uncaptured warm-up per state set, then one capture per set, then replays only
    # (the fake engine records a replayed run as an "execute" inside its launch)
    assert [c[0] for c in kinds(new, "execute", "begin_capture", "launch_graph")][:10] == [
        "execute", "execute", "begin_capture", "launch_graph", "execute", "begin_capture",
        "launch_graph", "execute", "launch_graph", "execute"]
    assert len(kinds(new, "begin_capture")) == 2 and len(kinds(new, "launch_graph")) == 8
    assert [c[2] for c in kinds(new, "end_capture")] == [1, 1]  # only the engine's run
    # each step ran exactly once and in order: logits = the context's run counter
    assert logits == list(np.arange(9, 19, dtype=float))  # runs 1-8 were prefill + growth
    # the graphs baked the two alternating address maps: set k read, set 1-k written
    captured = [c[2] for c in kinds(new, "captured")]
    first, second = captured
    for i in (0, 1):
        assert second[f"past_key_values.{i}.key"] == first[f"present.{i}.key"]
        assert second[f"present.{i}.key"] == first[f"past_key_values.{i}.key"]
        assert second[f"scr_past.{i}.num"] == first[f"scr_present.{i}.num"]
    assert all(c[1]["past_key_values.0.key"] == (1, 2, 15, 8) for c in kinds(new, "captured"))
    # each graph on its own context, whose bindings stay those it was captured with (a
    # context re-bound after its capture could replay the other set's addresses)
    contexts = [c[3] for c in kinds(new, "captured")]
    assert contexts[0] is not contexts[1]
    assert [ctx.addresses for ctx in contexts] == [first, second]
    # per token: ids and positions up, logits down, one launch; no shape or address calls
    tail = calls[-6:]
    assert [c[0] for c in tail] == ["upload", "upload", "launch_graph", "execute", "download",
                                    "sync"]
    assert runner.cuda_graph_status() == "on: 2 graph(s) captured, 8 launches"
    dec.close()
    assert len(kinds(calls, "destroy_graph")) == 2


def test_graphs_match_the_uncaptured_decoder_call_for_call():
    """Same requests with and without graphs: the engine sees the same shapes and addresses
    in the same order (a replay is the captured call, not another one)."""
    runs = {}
    for mode in (CudaGraphMode.OFF, CudaGraphMode.CAPTURE):
        runner = make_runner(mode)
        dec = runner.decoder(2)
        dec.step(np.zeros((2, 8), np.int64), np.tile(np.arange(8), (2, 1)))
        decode(dec, 8, 20)
        dec.step(np.zeros((2, 3), np.int64), np.tile(np.arange(28, 31), (2, 1)))  # a chunk
        decode(dec, 31, 5)
        runs[mode] = [(c[1], c[2]) for c in kinds(runner.cuda.calls, "execute")]
    assert runs[CudaGraphMode.OFF] == runs[CudaGraphMode.CAPTURE]


def test_a_refused_capture_falls_back_with_a_warning():
    runner = make_runner(refuse=True)
    calls = runner.cuda.calls
    dec = runner.decoder(1)
    dec.step(np.zeros((1, 8), np.int64), np.arange(8).reshape(1, 8))
    decode(dec, 8, 7)
    with pytest.warns(RuntimeWarning, match="execution failed under stream capture"):
        logits = decode(dec, 15, 6)
    assert logits == list(np.arange(9, 15, dtype=float))  # every step still ran, in order
    assert len(kinds(calls, "begin_capture")) == 1 == len(kinds(calls, "end_capture"))
    assert runner.cuda.capturing == {}  # the capture was ended: the stream is usable
    assert kinds(calls, "launch_graph") == []
    assert runner.cuda_graph_status().startswith("off: TensorRT execution failed")


def test_is_stream_capturable_false_means_no_capture():
    runner = make_runner(capturable=False)  # TensorRT for RTX's query says no
    dec = runner.decoder(1)
    dec.step(np.zeros((1, 8), np.int64), np.arange(8).reshape(1, 8))
    with pytest.warns(RuntimeWarning, match="not stream-capturable"):
        decode(dec, 8, 12)
    assert kinds(runner.cuda.calls, "begin_capture") == []
    assert len(kinds(runner.cuda.calls, "execute")) == 13


def test_a_growing_cache_is_never_captured():
    """window = null: P grows every token, so no shape repeats and nothing is captured."""
    full = SCRConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                     window=None, scr_layers=(0, 1))
    runner = make_runner(config=full, max_context=64)
    dec = runner.decoder(1)
    dec.step(np.zeros((1, 8), np.int64), np.arange(8).reshape(1, 8))
    decode(dec, 8, 20)
    assert kinds(runner.cuda.calls, "begin_capture") == []
    assert runner.cuda_graph_status().startswith("on, none captured yet")


def test_off_and_the_uncaptured_copy():
    runner = make_runner()
    plain = runner.without_cuda_graph()
    assert plain.engine is runner.engine and plain.cuda_graph is CudaGraphMode.OFF
    dec = plain.decoder(1)
    dec.step(np.zeros((1, 8), np.int64), np.arange(8).reshape(1, 8))
    decode(dec, 8, 12)
    assert kinds(plain.cuda.calls, "begin_capture") == []
    assert plain.cuda_graph_status() == "off: not requested (--cuda-graph)"
    assert runner.cuda_graph is CudaGraphMode.CAPTURE  # the original is untouched


class _Strategy:
    WHOLE_GRAPH_CAPTURE = "whole"


class _RuntimeConfig:
    cuda_graph_strategy = None


def test_graph_setup_per_backend():
    class Rtx:
        CudaGraphStrategy = _Strategy

    class Engine:
        def create_runtime_config(self):
            return _RuntimeConfig()

    assert graph_setup(Rtx, "tensorrt_rtx", Engine(), False) == (CudaGraphMode.OFF, None)
    mode, config = graph_setup(Rtx, "tensorrt_rtx", Engine(), True)
    assert mode is CudaGraphMode.NATIVE and config.cuda_graph_strategy == "whole"
    assert graph_setup(object(), "tensorrt", Engine(), True) == (CudaGraphMode.CAPTURE, None)
    # NATIVE: the runner hands the config to every context and captures nothing itself
    cuda = FakeCuda([])
    lim = tp.Limits.from_profiles(tp.profiles(W16, max_batch=1, max_prefill=8), W16)
    runner = TrtRunner(FakeEngine(cuda), W16, np.float32, lim, cuda, cuda_graph=mode,
                       runtime_config=config)
    dec = runner.decoder(1)
    dec.step(np.zeros((1, 8), np.int64), np.arange(8).reshape(1, 8))
    decode(dec, 8, 12)
    assert runner.engine.contexts[-1].runtime_config is config
    assert kinds(cuda.calls, "begin_capture") == []
    assert runner.cuda_graph_status().startswith("native")



def test_a_dropped_decoder_frees_its_device_memory_at_once():
    """No reference cycle between a decoder's state and its graphs: dropping the last
    reference frees the buffers and graphs without waiting for the cyclic GC."""
    import gc

    runner = make_runner()
    dec = runner.decoder(1)
    dec.step(np.zeros((1, 8), np.int64), np.arange(8).reshape(1, 8))
    decode(dec, 8, 12)
    assert runner.cuda.mem and runner.cuda_graph_status().startswith("on: 2 graph(s)")
    gc.disable()
    try:
        del dec
        assert runner.cuda.mem == {} and len(kinds(runner.cuda.calls, "destroy_graph")) == 2
    finally:
        gc.enable()
