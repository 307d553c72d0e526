"""The onnxruntime decoder's three paths: host `run` (CPU, growing cache), IOBinding with
OrtValue state (the CUDA path, exercised here on CPU OrtValues), and the two prebound
bindings of the fixed-shape phase. Oracle: the stateless `Runner.infer` on host arrays."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from scredge.runtime import Engine
from scredge.runtime.cache import empty_state, state_from_outputs


def test_bound_path_equals_stateless_infer(small_window_concat):
    runner = Engine.load(small_window_concat[1]).runner
    bound = runner.decoder(2)
    bound._binding = runner.session.io_binding()  # the path the CUDA provider takes
    bound._state = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in bound._state.items()}
    bound._host_step = bound._bound_step
    host = runner.decoder(2)
    state = empty_state(runner.config, 2)
    ids = np.random.default_rng(0).integers(0, 256, (2, 40))
    start = 0
    for size in (5, 3, *([1] * 32)):  # past W-1 = 15: growing, then the fixed-shape phase
        chunk = ids[:, start:start + size]
        pos = np.tile(np.arange(start, start + size), (2, 1))
        mask = np.ones((2, state["past_key_values.0.key"].shape[2] + size), np.int64)
        out = runner.infer({"input_ids": chunk, "position_ids": pos, "attention_mask": mask,
                            **state})
        state = state_from_outputs(out)
        np.testing.assert_allclose(bound.step(chunk, pos), out["logits"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(host.step(chunk, pos), out["logits"], rtol=0, atol=1e-6)
        start += size
    assert bound._steady is not None and host._steady is not None
    assert bound.past == host.past == 15
