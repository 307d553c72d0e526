"""Streaming and stop strings. Oracle: a scripted runner whose logits force a known byte
sequence, so the expected text is known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from scredge.config import SCRConfig
from scredge.runtime import Engine
from scredge.runtime.runners.base import Decoder, Runner, TensorMeta

TEXT = "héllo wörld, 世界 🙂 ok"


class ScriptedRunner(Runner):
    """Emits the bytes of `script` in order, whatever it is fed."""

    backend = "scripted"

    def __init__(self, script: bytes) -> None:
        super().__init__(SCRConfig(d_model=8, n_layers=1, n_heads=1, n_kv_heads=1, d_ff=8,
                                   scr_layers=()), np.float32)
        self.script = script

    input_metadata = property(lambda self: {"input_ids": TensorMeta(np.dtype(np.int64),
                                                                    ("batch", "sequence"))})
    output_names = property(lambda self: ["logits"])

    def _infer(self, feed):
        raise NotImplementedError

    def decoder(self, batch):
        return ScriptedDecoder(self, batch)


class ScriptedDecoder(Decoder):
    """Call k (the prefill is call 0) puts all the mass on byte k of the script."""

    def __init__(self, runner, batch):
        super().__init__(runner, batch)
        self.calls = 0

    def step(self, ids, positions):
        logits = np.zeros((*ids.shape, 256), np.float32)
        logits[:, -1, self.runner.script[self.calls % len(self.runner.script)]] = 10.0
        self.calls += 1
        return logits


def test_stream_never_splits_a_character():
    data = TEXT.encode()
    engine = Engine(ScriptedRunner(data))
    pieces = list(engine.stream("x", max_new_tokens=len(data), temperature=0))
    assert "".join(pieces) == TEXT
    assert all("\ufffd" not in p for p in pieces)
    assert len(pieces) == len(TEXT)  # one piece per character: multi-byte ones held whole
    result = engine.generate("x", max_new_tokens=len(data), temperature=0)
    assert result.text == TEXT and bytes(result.ids) == data


def test_stop_string_is_excluded_and_not_streamed():
    engine = Engine(ScriptedRunner(TEXT.encode()))
    result = engine.generate("x", 100, temperature=0, stop=["世界"])
    assert result.text == "héllo wörld, " and result.finish_reason == "stop"
    streamed = "".join(engine.stream("x", 100, temperature=0, stop=["世界"]))
    assert streamed == "héllo wörld, "
    by_id = engine.generate("x", 100, temperature=0, stop=[ord("w")])
    assert by_id.text == "héllo " and by_id.finish_reason == "stop"
    assert engine.generate("x", 3, temperature=0).finish_reason == "length"


@pytest.mark.parametrize("bad", [[""], [None], [1.5]])
def test_bad_stop_entries(bad):
    from scredge.errors import ScredgeError

    with pytest.raises(ScredgeError, match="stop entries"):
        Engine(ScriptedRunner(b"a")).generate("x", 2, stop=bad)
