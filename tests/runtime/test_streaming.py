"""Streaming and stop strings. Oracle: a scripted runner whose logits force a known byte
sequence, so the expected text is known exactly."""

from __future__ import annotations

import pytest
from scripted_runner import ScriptedRunner

from scredge.runtime import Engine

TEXT = "héllo wörld, 世界 🙂 ok"


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
