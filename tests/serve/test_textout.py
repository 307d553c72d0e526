"""The output text of one request as tokens arrive: stop strings across token boundaries
and multi-byte characters. Oracle: Python's str.find on the whole decoded text (the text
before the first stop string), and the pieces concatenating to the final text."""

from __future__ import annotations

from scredge.runtime.tokenizer import ByteTokenizer
from scredge.serve.textout import TextOutput


def _run(text: str, stop: list[str]) -> tuple[list[str], TextOutput]:
    out = TextOutput(ByteTokenizer(), stop)
    pieces = []
    for b in text.encode():
        pieces.append(out.push(b))
        if out.stopped:
            break
    if not out.stopped:
        pieces.append(out.finish())
    return pieces, out


def test_stop_across_tokens_and_held_back_prefix():
    """'END' arriving byte by byte ends the text before it; 'EN' was never shown early."""
    pieces, out = _run("abcENxyENDtail", ["END", "QQ"])
    assert out.stopped and out.text == "abcENxy"
    assert "".join(pieces) == "abcENxy"
    assert "abcEN" not in "".join(pieces[:5])  # held while it could begin "END"


def test_multibyte_characters_and_no_stop():
    """UTF-8 characters split over tokens come out whole; without a stop everything shows."""
    text = "héllo wörld ✓ done"
    pieces, out = _run(text, ["zz"])
    assert not out.stopped and "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_stops_ending_on_the_same_token_cut_as_engine_generate():
    """Several stop strings completed by one token: the first in the list cuts (oracle:
    Engine.generate's rule, which checks the stops in order after each token)."""
    assert _run("xaabzz", ["ab", "aab"])[1].text == "xa"
    assert _run("xaabzz", ["aab", "ab"])[1].text == "x"
    pieces, out = _run("one two three", ["three", "two"])
    assert out.text == "one " and "".join(pieces) == "one "
