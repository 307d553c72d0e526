"""The runtime's choice of Realign implementation on onnxruntime, and a whole graph run both
ways. Oracles: the float32 reference model (scr_ref) at the logits tier (SCR_SPEC section 5)
for each way, and the two ways against each other; `Engine.realign_kernel` says which ran.
Skipped with the reason where the kernel library cannot be built."""

from __future__ import annotations

import numpy as np
import pytest

from scredge.errors import ScredgeError
from scredge.runtime import Engine
from scredge.runtime.realign_kernel import CUSTOM_OP, ENV_CHOICE, FUNCTION

torch = pytest.importorskip("torch", reason="the reference model needs torch")


def _logits(engine, ids, steps):
    """Prefill `ids` then `steps` teacher-forced decode steps: [(T or 1, V) logits]."""
    dec = engine.runner.decoder(1)
    out = [dec.step(ids[None], np.arange(len(ids))[None])[0].copy()]
    for i in range(steps):
        tok = np.array([[ids[i % len(ids)]]])
        out.append(dec.step(tok, np.array([[len(ids) + i]]))[0].copy())
    return out


def _reference(model, ids, steps):
    seq = list(ids) + [ids[i % len(ids)] for i in range(steps)]
    with torch.no_grad():
        full, _ = model(torch.tensor([seq]), torch.arange(len(seq)).view(1, -1))
    full = full[0].float().numpy()
    return [full[:len(ids)]] + [full[len(ids) + i:len(ids) + i + 1] for i in range(steps)]


def test_graph_runs_the_same_both_ways(tiny_artifact, realign_ort_library, monkeypatch):
    """The tiny artifact (SCR on its layers) through the runtime with the kernel (the default
    where built) and with the function body: both within the float32 logits tier of the
    reference (max abs diff <= 1e-3) and within 1e-4 of each other, same argmax."""
    model, folder = tiny_artifact
    ids = np.array([5, 17, 101, 3, 250, 42, 7, 9, 64, 128, 11, 200], np.int64)
    monkeypatch.delenv(ENV_CHOICE, raising=False)
    kernel = Engine.load(folder, backend="ort", device="cpu", threads=1)
    monkeypatch.setenv(ENV_CHOICE, "function")
    function = Engine.load(folder, backend="ort", device="cpu", threads=1)
    assert kernel.realign_kernel == CUSTOM_OP and function.realign_kernel == FUNCTION
    ref = _reference(model, ids, 24)
    got_k, got_f = _logits(kernel, ids, 24), _logits(function, ids, 24)
    for r, k, f in zip(ref, got_k, got_f):
        assert np.abs(k - r).max() <= 1e-3 and np.abs(f - r).max() <= 1e-3
        assert np.abs(k - f).max() <= 1e-4
        assert (k.argmax(-1) == f.argmax(-1)).all()


def test_generation_is_identical_both_ways(tiny_artifact, realign_ort_library, monkeypatch):
    """Greedy generation past the window (W = 128 in tiny): the same ids with the kernel and
    with the function body (oracle: each other; the logits test above ties both to scr_ref)."""
    _, folder = tiny_artifact
    runs = {}
    for choice in ("custom-op", "function"):
        monkeypatch.setenv(ENV_CHOICE, choice)
        engine = Engine.load(folder, backend="ort", device="cpu", threads=1)
        assert engine.realign_kernel == choice
        runs[choice] = engine.generate([1, 2, 3, 4], max_new_tokens=160, temperature=0.0,
                                       ignore_eos=True).ids
    assert runs["custom-op"] == runs["function"] and len(runs["function"]) == 160


def test_incompatible_library_falls_back_to_the_function(tiny_artifact, future_api_library,
                                                         monkeypatch):
    """A library built for an onnxruntime API this onnxruntime lacks (asks for API 99):
    the runner runs the function body, says why, and generates; required, it is refused."""
    from scredge.runtime.loaders import load_ort, open_artifact

    _, folder = tiny_artifact
    lib = future_api_library
    monkeypatch.delenv(ENV_CHOICE, raising=False)
    runner = load_ort(open_artifact(folder), device="cpu", threads=1, realign_library=lib)
    assert runner.realign.kind == FUNCTION and "API version 99" in runner.realign.reason
    assert Engine(runner).generate([1, 2, 3], max_new_tokens=4, temperature=0.0).ids
    monkeypatch.setenv(ENV_CHOICE, "custom-op")
    with pytest.raises(ScredgeError, match="cannot be used"):
        load_ort(open_artifact(folder), device="cpu", threads=1, realign_library=lib)


def test_unknown_choice_is_refused(tiny_artifact, monkeypatch):
    """$SCREDGE_REALIGN_KERNEL outside its choices: a ScredgeError naming them."""
    monkeypatch.setenv(ENV_CHOICE, "fast")
    with pytest.raises(ScredgeError, match="SCREDGE_REALIGN_KERNEL"):
        Engine.load(tiny_artifact[1], backend="ort", device="cpu")
