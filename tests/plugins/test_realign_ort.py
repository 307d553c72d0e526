"""The `scr.Realign` onnxruntime custom-op kernel (CPU) at the op tier, and how it is picked.

Oracle: the float64 loop of tests/oracles.py (written from SCR_SPEC section 2), and for
very long T a float64 prefix-sum form of the same text; tolerances are the op tier
(max abs error <= 1e-5 x scale float32, 2e-3 x scale float16; scale = max(1, |h|, |m_prev|)).
Which implementation ran is read from onnxruntime's own optimised graph. Skipped with the
reason where the library cannot be built (no compiler, no headers).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from oracles import random_inputs, realign_spec_f64, run_in_chunks
from scredge.contract import REALIGN_INPUTS as INPUTS
from scredge.contract import REALIGN_OUTPUTS as OUTPUTS
from scredge.errors import ScredgeError
from scredge.export.realign_onnx import realign_function

WEIGHTS = ("w_r", "b_r", "w_g", "b_g")
TOL = {np.float32: 1e-5, np.float16: 2e-3}


def _model(D, kappa, x_type=TensorProto.FLOAT, weights=None, function=True):
    """One scr.Realign node as the exporter writes it (with its local function unless asked
    otherwise); `weights` as initializers, else fed."""
    shapes = {"h": ["B", "T", D], "m_prev": ["B", "T", D], "num_in": ["B", D],
              "den_in": ["B", 1], "w_r": [D], "b_r": [1], "w_g": [D], "b_g": [1]}
    types = {"h": x_type, "m_prev": x_type}
    fed = [n for n in INPUTS if weights is None or n not in WEIGHTS]
    inputs = [helper.make_tensor_value_info(n, types.get(n, TensorProto.FLOAT), shapes[n])
              for n in fed]
    inits = [] if weights is None else [numpy_helper.from_array(a, n)
                                        for n, a in zip(WEIGHTS, weights)]
    outputs = [helper.make_tensor_value_info("m", x_type, ["B", "T", D]),
               helper.make_tensor_value_info("num_out", TensorProto.FLOAT, ["B", D]),
               helper.make_tensor_value_info("den_out", TensorProto.FLOAT, ["B", 1])]
    node = helper.make_node("Realign", list(INPUTS), list(OUTPUTS), domain="scr", kappa=kappa,
                            plugin_namespace="scr", plugin_version="1", name="realign_0")
    model = helper.make_model(
        helper.make_graph([node], "realign", inputs, outputs, initializer=inits),
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("scr", 1)],
        functions=[realign_function(18)] if function else [])
    return model, fed


def _session(model, library, save=None):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if library is not None:
        opts.register_custom_ops_library(str(library))
    if save is not None:
        opts.optimized_model_filepath = str(save)
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _run(arrays, kappa, library, x_dtype=np.float32):
    x_type = TensorProto.FLOAT16 if x_dtype == np.float16 else TensorProto.FLOAT
    model, fed = _model(arrays[0].shape[-1], kappa, x_type)
    feed = dict(zip(INPUTS, arrays))
    feed["h"], feed["m_prev"] = feed["h"].astype(x_dtype), feed["m_prev"].astype(x_dtype)
    return _session(model, library).run(None, {n: feed[n] for n in fed})


def _check(arrays, kappa, got, tol, ref=None):
    m, num, den = got
    m_ref, num_ref, den_ref = ref or realign_spec_f64(*arrays, kappa=kappa)
    scale = max(1.0, np.abs(arrays[0]).max(), np.abs(arrays[1]).max())
    assert np.isfinite(m).all() and np.isfinite(num).all() and np.isfinite(den).all()
    assert m.shape == m_ref.shape and num.shape == num_ref.shape and den.shape == den_ref.shape
    np.testing.assert_allclose(m.astype(np.float64), m_ref, atol=tol * scale, rtol=0)
    np.testing.assert_allclose(den, den_ref, rtol=1e-5, atol=0)
    np.testing.assert_allclose(num, num_ref, rtol=1e-5, atol=1e-5 * np.abs(num_ref).max())


def _prefix_oracle(h, m_prev, num_in, den_in, w_r, b_r, w_g, b_g, kappa):
    """SCR_SPEC section 2 in float64 with prefix sums (np.cumsum): for T too long for a loop."""
    h, m_prev = h.astype(np.float64), m_prev.astype(np.float64)
    e = np.exp(kappa * np.tanh((h @ w_r.astype(np.float64) + b_r[0]) / kappa) - kappa)
    num = num_in[:, None].astype(np.float64) + np.cumsum(e[..., None] * h, axis=1)
    den = den_in[:, None].astype(np.float64) + np.cumsum(e, axis=1)[..., None]
    beta = 1.0 / (1.0 + np.exp(-(h @ w_g.astype(np.float64) + b_g[0])))[..., None]
    return (1 - beta) * m_prev + beta * num / den, num[:, -1], den[:, -1]


def test_kernel_is_preferred_over_the_local_function(realign_ort_library, tmp_path):
    """Oracle: onnxruntime's own optimised graph. With the library registered the graph
    keeps its one Realign node (the kernel runs, the function is not inlined); without it
    the function is inlined into standard ops. So the runtime hands the graph over as it is."""
    arrays = random_inputs(np.random.default_rng(0), 1, 3, 8)
    model, _ = _model(8, 8.0, weights=arrays[4:])
    _session(model, realign_ort_library, tmp_path / "with.onnx")
    _session(model, None, tmp_path / "without.onnx")
    with_lib = [n.op_type for n in onnx.load(str(tmp_path / "with.onnx")).graph.node]
    without = {n.op_type for n in onnx.load(str(tmp_path / "without.onnx")).graph.node}
    assert with_lib == ["Realign"], with_lib
    assert "Realign" not in without and {"CumSum", "Exp"} <= without, without


@pytest.mark.parametrize(("B", "T", "D", "kappa", "carry"), [
    (1, 1, 128, 8.0, True), (3, 1, 16, 8.0, False), (2, 37, 16, 3.0, True),
    (1, 4096, 64, 8.0, True), (2, 300, 512, 8.0, True), (3, 5, 1, 8.0, True)])
def test_float32_op_tier(realign_ort_library, B, T, D, kappa, carry):
    """Decode (T = 1), chunks, T = 4096 and D = 512 (the D512 model), against the oracle."""
    arrays = random_inputs(np.random.default_rng(T + B + D), B, T, D, carry=carry)
    _check(arrays, kappa, _run(arrays, kappa, realign_ort_library), TOL[np.float32])


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # the oracle's sigmoid
def test_large_values_saturating_scores(realign_ort_library):
    """|h| up to 6e4 with weights that saturate both scores, T = 4096: finite, op tier."""
    arrays = random_inputs(np.random.default_rng(11), 2, 4096, 32, h_scale=2e4)
    arrays[0] = np.clip(arrays[0], -6e4, 6e4).astype(np.float32)
    arrays[0][0, 5] = 6e4
    arrays[4] *= 50
    arrays[6] *= 50
    _check(arrays, 8.0, _run(arrays, 8.0, realign_ort_library), TOL[np.float32])


def test_million_tokens(realign_ort_library):
    """SCR_SPEC's invariant: T = 1e6 in one call. Typical |h|: the op tier against the float64
    prefix-sum oracle (the blocked, compensated host scan keeps long sums accurate)."""
    arrays = random_inputs(np.random.default_rng(5), 1, 1_000_000, 4)
    got = _run(arrays, 8.0, realign_ort_library)
    _check(arrays, 8.0, got, TOL[np.float32], ref=_prefix_oracle(*arrays, 8.0))


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # the oracle's sigmoid
def test_million_tokens_at_6e4(realign_ort_library):
    """T = 1e6 with |h| up to 6e4: no NaN or Inf, carries within 1e-5 (relative) of the
    float64 oracle, and m no further from it than scr_ref's own float32 op (oracle: the
    reference, which is off by ~4e-4 x scale there itself: a float32 dot product of values
    near 6e4 moves a sigmoid near 0.5 that much, so no float32 implementation meets 1e-5)."""
    torch = pytest.importorskip("torch", reason="the float32 reference needs torch")
    from scredge.ref.realign_op import realign_reference

    arrays = random_inputs(np.random.default_rng(5), 1, 1_000_000, 4, h_scale=3e4)
    arrays[0] = np.clip(arrays[0], -6e4, 6e4).astype(np.float32)
    arrays[4] *= 50  # saturating scores, as the 6e4 case of the function's tests
    arrays[6] *= 50
    m, num, den = _run(arrays, 8.0, realign_ort_library)
    m_ref, num_ref, den_ref = _prefix_oracle(*arrays, 8.0)
    assert np.isfinite(m).all() and np.isfinite(num).all() and np.isfinite(den).all()
    np.testing.assert_allclose(den, den_ref, rtol=1e-5, atol=0)
    np.testing.assert_allclose(num, num_ref, rtol=0, atol=1e-5 * np.abs(num_ref).max())
    reference = realign_reference(*(torch.from_numpy(a) for a in arrays), 8.0)[0].numpy()
    ours, theirs = np.abs(m - m_ref).max(), np.abs(reference - m_ref).max()
    assert ours <= 1.5 * theirs, (ours, theirs)


def test_chunked_calls_thread_the_carry(realign_ort_library):
    """The chunking invariant: 1 + 6 + 1 and 130 + 170 tokens in calls that thread
    (num, den) equal one call (float tolerance), starting from the empty carry (0, 0)."""
    for sizes in ((1, 6, 1), (130, 170)):
        arrays = random_inputs(np.random.default_rng(8), 2, sum(sizes), 16, carry=False)
        whole = _run(arrays, 8.0, realign_ort_library)
        m, num, den = run_in_chunks(lambda a: _run(a, 8.0, realign_ort_library), arrays, sizes)
        np.testing.assert_allclose(m, whole[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(num, whole[1], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(den, whole[2], rtol=1e-5, atol=0)


@pytest.mark.parametrize("T", [1, 200])
def test_float16_io(realign_ort_library, T):
    """float16 h and m_prev: m in float16 within 2e-3 x scale, carries in float32."""
    arrays = random_inputs(np.random.default_rng(3), 2, T, 32)
    arrays[0] = arrays[0].astype(np.float16).astype(np.float32)  # what the fp16 op sees
    arrays[1] = arrays[1].astype(np.float16).astype(np.float32)
    m, num, den = _run(arrays, 8.0, realign_ort_library, x_dtype=np.float16)
    assert m.dtype == np.float16 and num.dtype == np.float32 and den.dtype == np.float32
    _check(arrays, 8.0, [m, num, den], TOL[np.float16])


def test_kernel_and_function_agree(realign_ort_library):
    """The same graph run both ways (kernel registered, function body) gives the same
    outputs within the op tier; oracle: each other, and the float64 loop for both."""
    arrays = random_inputs(np.random.default_rng(21), 2, 64, 48)
    with_kernel = _run(arrays, 8.0, realign_ort_library)
    function = _run(arrays, 8.0, None)
    for a, b in zip(with_kernel, function):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    _check(arrays, 8.0, with_kernel, TOL[np.float32])
    _check(arrays, 8.0, function, TOL[np.float32])


def test_empty_sequence_passes_the_carry_through(realign_ort_library):
    """T = 0: m is empty and (num, den) come back unchanged (SCR_SPEC: sums over no token)."""
    arrays = random_inputs(np.random.default_rng(2), 2, 0, 8)
    m, num, den = _run(arrays, 8.0, realign_ort_library)
    assert m.shape == (2, 0, 8)
    np.testing.assert_array_equal(num, arrays[2])
    np.testing.assert_array_equal(den, arrays[3])


def test_bad_shapes_are_refused_by_name(realign_ort_library):
    """A den_in of the wrong shape: onnxruntime raises the kernel's message naming the node
    and the input (the process lives on)."""
    arrays = random_inputs(np.random.default_rng(1), 2, 3, 8)
    model, fed = _model(8, 8.0, function=False)
    model.graph.input[3].CopyFrom(helper.make_tensor_value_info("den_in", TensorProto.FLOAT,
                                                                None))
    feed = dict(zip(INPUTS, arrays))
    feed["den_in"] = np.ones((2, 2), np.float32)
    with pytest.raises(Exception, match=r"realign_0.*den_in must be \[2,1\]"):
        _session(model, realign_ort_library).run(None, {n: feed[n] for n in fed})


def test_probe_picks_the_kernel(realign_ort_library):
    """The runtime's probe (a wrong-on-purpose local function) says the kernel ran."""
    from scredge.runtime.realign_kernel import CUSTOM_OP, probe

    kernel = probe(realign_ort_library)
    assert kernel.kind == CUSTOM_OP and kernel.library == realign_ort_library


def test_library_for_a_newer_onnxruntime_is_refused(future_api_library, monkeypatch):
    """Oracle: onnxruntime's own refusal, passed on. Registering the API-99 build fails with
    the library's message naming both versions; the runtime falls back to the function body
    with that reason, and refuses by name when the kernel is required."""
    from scredge.runtime import realign_kernel

    with pytest.raises(Exception, match=r"API version 99.*" + ort.__version__.replace(".", r"\.")):
        ort.SessionOptions().register_custom_ops_library(str(future_api_library))
    monkeypatch.delenv(realign_kernel.ENV_CHOICE, raising=False)
    picked = realign_kernel.pick("cpu", future_api_library)
    assert picked.kind == realign_kernel.FUNCTION
    assert "API version 99" in picked.reason and ort.__version__ in picked.reason
    monkeypatch.setenv(realign_kernel.ENV_CHOICE, "custom-op")
    with pytest.raises(ScredgeError, match="cannot be used"):
        realign_kernel.pick("cpu", future_api_library)


def test_not_a_library_falls_back(tmp_path):
    """A file that is no shared library: the function body, with onnxruntime's reason."""
    from scredge.runtime import realign_kernel

    bad = tmp_path / "libscr_realign_ort.so"
    bad.write_bytes(b"not an ELF file")
    picked = realign_kernel.probe(bad)
    assert picked.kind == realign_kernel.FUNCTION and "refused" in picked.reason


def test_build_is_skipped_with_the_reason_without_a_compiler(tmp_path, monkeypatch, capsys):
    """No C++ compiler on PATH: the build raises a ScredgeError saying so, and `make
    kernels` (--if-possible) prints the reason and succeeds, writing nothing."""
    from scredge.plugins.realign import ort_kernel

    monkeypatch.setattr(ort_kernel, "fetch_headers", lambda: tmp_path)  # headers not needed
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    out = tmp_path / "lib.so"
    with pytest.raises(ScredgeError, match="no C\\+\\+ compiler"):
        ort_kernel.build_library(out)
    assert ort_kernel.main(["--if-possible", "--out", str(out)]) == 0
    assert "skipped: no C++ compiler" in capsys.readouterr().out
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))


def test_headers_folder_without_the_api_header_is_refused(tmp_path, monkeypatch):
    """$SCREDGE_ORT_INCLUDE_DIR pointing at a folder without onnxruntime_c_api.h."""
    from scredge.plugins.realign import ort_kernel

    monkeypatch.setenv(ort_kernel.ENV_INCLUDE, str(tmp_path))
    with pytest.raises(ScredgeError, match="no onnxruntime_c_api.h"):
        ort_kernel.fetch_headers()


def test_stale_library_is_not_used(realign_ort_library, tmp_path, monkeypatch):
    """A library whose stamp names other sources is passed over, with the rebuild command."""
    import shutil

    from scredge.plugins.realign import ort_kernel

    lib = tmp_path / realign_ort_library.name
    shutil.copy(realign_ort_library, lib)
    ort_kernel.stamp_path(lib).write_text('{"sources_sha256": "0"}')
    monkeypatch.delenv(ort_kernel.ENV_LIB, raising=False)
    monkeypatch.setattr(ort_kernel, "library_path", lambda cuda=False: lib)
    found, why = ort_kernel.find_library()
    assert found is None and "other sources" in why and "make kernels" in why
