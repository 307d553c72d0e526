"""Tokenizers of SCR_SPEC section 1 behind one small interface:

    encode(text, add_special_tokens=True) -> ids     decode(ids) -> text
    stream_decoder() -> .push(id) -> text, .flush() -> text
    eos_ids (what generation stops on by default), chat_template (None without one)

`ByteTokenizer` is the default: UTF-8 bytes, id = byte value, V = 256, no eos, no chat
template. An artifact carrying `tokenizer.json` uses `HFTokenizer` (runtime/hf_tokenizer.py,
the `tokenizers` library; no torch, no transformers). Either stream decoder never splits a
multi-byte character: an incomplete sequence waits for the ids that complete it.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from typing import Protocol

from scredge.artifact import listed_member
from scredge.contract import TOKENIZER_FILE


class TextStream(Protocol):
    def push(self, token: int) -> str: ...
    def flush(self) -> str: ...


class Tokenizer(Protocol):
    eos_ids: tuple[int, ...]
    chat_template: str | None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def stream_decoder(self) -> TextStream: ...


class ByteTokenizer:
    vocab_size = 256
    eos_ids: tuple[int, ...] = ()  # bytes have no end-of-sequence token
    chat_template: str | None = None
    max_token_chars = 1  # a token is one byte: never more than one character

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        # a model may emit invalid UTF-8; show it as U+FFFD rather than failing
        return bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder()


class StreamDecoder:
    """Incremental UTF-8: feed ids, get the text that is complete so far."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self._decoder.decode(bytes((token,)))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


def load_tokenizer(artifact) -> Tokenizer | None:
    """The artifact's tokenizer: its Hugging Face files when it carries them, else bytes when
    the vocabulary is 256, else None (the model then takes and gives ids only)."""
    if listed_member(artifact.folder, artifact.manifest, TOKENIZER_FILE, "tokenizer"):
        from scredge.runtime.hf_tokenizer import HFTokenizer

        return HFTokenizer.load(artifact.folder, artifact.manifest, artifact.settings)
    return ByteTokenizer() if artifact.config.vocab_size == 256 else None
