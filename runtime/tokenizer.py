"""The default tokenizer of SCR_SPEC section 1: UTF-8 bytes, id = byte value, V = 256.

`StreamDecoder` turns ids into text pieces as they arrive without ever splitting a
multi-byte character: incomplete sequences wait for their continuation bytes.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

from scredge.errors import ScredgeError


class ByteTokenizer:
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        # a model may emit invalid UTF-8; show it as U+FFFD rather than failing
        return bytes(ids).decode("utf-8", errors="replace")

    def check_vocab(self, vocab_size: int) -> None:
        if vocab_size != self.vocab_size:
            raise ScredgeError(
                "the byte tokenizer needs a 256-token vocabulary",
                received=f"vocab_size = {vocab_size}",
                expected="256 (UTF-8 bytes)",
                fix="pass token ids instead of text for models with other vocabularies")


class StreamDecoder:
    """Incremental UTF-8: feed ids, get the text that is complete so far."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self._decoder.decode(bytes((token,)))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
