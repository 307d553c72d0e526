"""Export fixtures: small configs exported once per module (each export takes seconds)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from scredge.runtime.cache import state_from_outputs


class OrtDecoder:
    """Runs an exported graph call by call, threading the state as a runtime would."""

    def __init__(self, path):
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]

    def __call__(self, ids, pos, state, mask=None):
        if mask is None:  # every cached slot real (SCR_SPEC section 3, v2)
            mask = np.ones((ids.shape[0], state["past_key_values.0.key"].shape[2]
                            + ids.shape[1]), np.int64)
        outs = dict(zip(self.names, self.session.run(
            None, {"input_ids": ids, "position_ids": pos, "attention_mask": mask, **state})))
        return outs, state_from_outputs(outs)


@pytest.fixture
def ort_decoder():
    return OrtDecoder


@pytest.fixture
def rng():
    return np.random.default_rng(0)
