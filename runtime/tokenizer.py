"""The default tokenizer of SCR_SPEC section 1: UTF-8 bytes, id = byte value, V = 256.

`StreamDecoder` turns ids into text pieces as they arrive without ever splitting a
multi-byte character: incomplete sequences wait for their continuation bytes.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable


class ByteTokenizer:
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        # a model may emit invalid UTF-8; show it as U+FFFD rather than failing
        return bytes(ids).decode("utf-8", errors="replace")


class StreamDecoder:
    """Incremental UTF-8: feed ids, get the text that is complete so far."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self._decoder.decode(bytes((token,)))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
