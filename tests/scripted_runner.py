"""A runner whose logits follow a script, for tests of the generation loop itself (stops,
streaming, detokenizing) where a real model's choices would only get in the way."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scredge.config import SCRConfig
from scredge.runtime.runners.base import Decoder, Runner, TensorMeta


class ScriptedRunner(Runner):
    """Call k of a decoder (the prefill is call 0) puts all the mass on id script[k]
    (cycling), whatever it is fed; `script` may be `bytes` (ids 0-255)."""

    backend = "scripted"

    def __init__(self, script: Sequence[int], vocab_size: int = 256) -> None:
        super().__init__(SCRConfig(vocab_size=vocab_size, d_model=8, n_layers=1, n_heads=1,
                                   n_kv_heads=1, d_ff=8, scr_layers=()), np.float32)
        self.script = script

    input_metadata = property(lambda self: {"input_ids": TensorMeta(np.dtype(np.int64),
                                                                    ("batch", "sequence"))})
    output_names = property(lambda self: ["logits"])

    def _infer(self, feed):
        raise NotImplementedError

    def decoder(self, batch):
        return ScriptedDecoder(self, batch)


class ScriptedDecoder(Decoder):
    def __init__(self, runner, batch):
        super().__init__(runner, batch)
        self.calls = 0

    def step(self, ids, positions):
        logits = np.zeros((*ids.shape, self.runner.config.vocab_size), np.float32)
        logits[:, -1, self.runner.script[self.calls % len(self.runner.script)]] = 10.0
        self.calls += 1
        return logits
