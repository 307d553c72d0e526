"""One row's text as ids arrive (`StopText`, used by `Engine.generate`/`stream` and by the
server): stop strings across token boundaries and multi-byte characters. Oracle: Python's
str.find on the whole decoded text (the text before the earliest stop string), and the
released pieces concatenating to the final text."""

from __future__ import annotations

from scredge.runtime.stop_text import StopText
from scredge.runtime.tokenizer import ByteTokenizer


def _run(text: str, stop: list[str]) -> tuple[list[str], StopText]:
    out = StopText(ByteTokenizer().stream_decoder(), stop)
    pieces = []
    for b in text.encode():
        stopped = out.push(b)
        pieces.append(out.release())
        if stopped:
            break
    if not out.stopped:
        out.finish()
        pieces.append(out.release_all())
    return pieces, out


def _oracle(text: str, stop: list[str]) -> str:
    hits = [i for s in stop if (i := text.find(s)) >= 0]
    return text[:min(hits)] if hits else text


def test_stop_across_tokens_and_held_back_prefix():
    """'END' arriving byte by byte ends the text before it; 'EN' was never shown early."""
    pieces, out = _run("abcENxyENDtail", ["END", "QQ"])
    assert out.stopped and out.text == "abcENxy" == _oracle("abcENxyENDtail", ["END", "QQ"])
    assert "".join(pieces) == "abcENxy"
    assert "abcEN" not in "".join(pieces[:5])  # held while it could begin "END"


def test_multibyte_characters_and_no_stop():
    """UTF-8 characters split over tokens come out whole; without a stop everything shows."""
    text = "héllo wörld ✓ done"
    pieces, out = _run(text, ["zz"])
    assert not out.stopped and "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_stops_completed_by_one_token_cut_at_the_earliest():
    """Several stop strings completed by the same token: the text ends before the one that
    begins first, whatever the list order, so no stop string is ever in the text."""
    for stop in (["ab", "aab"], ["aab", "ab"]):
        pieces, out = _run("xaabzz", stop)
        assert out.text == "x" == _oracle("xaabzz", stop) and "".join(pieces) == "x"
    pieces, out = _run("one two three", ["three", "two"])
    assert out.text == "one " and "".join(pieces) == "one "


def test_ids_kept_are_those_wholly_before_the_cut():
    """The ids of a stopped row: every byte before the stop string, none of it."""
    _, out = _run("hi STOP there", ["STOP"])
    assert bytes(out.ids) == b"hi "
