"""One request's output text as tokens arrive: decoded incrementally, cut at the first
stop string, with any tail that may still begin a stop string held back from the stream.

The result equals `Engine.generate`'s for the same tokens: the text before the first stop
string, a stop id (or the tokenizer's end of sequence) ends it without being shown.
"""

from __future__ import annotations

from scredge.runtime.tokenizer import StreamDecoder


def stream_decoder(tokenizer) -> object:
    """An incremental decoder (`push(id) -> str`, `flush() -> str`) for `tokenizer` (its
    Hugging Face one, or UTF-8 bytes for the byte tokenizer; None: bytes)."""
    return StreamDecoder() if tokenizer is None else tokenizer.stream_decoder()


class TextOutput:
    def __init__(self, tokenizer, stop: list[str]) -> None:
        self._decoder = stream_decoder(tokenizer)
        self.stop = [s for s in stop if s]
        self._longest = max((len(s) for s in self.stop), default=0)
        self.text = ""  # decoded so far (stop string excluded once found)
        self.sent = 0  # characters of `text` already handed out
        self.stopped = False

    def push(self, token: int) -> str:
        """Add a token; returns the text now safe to show (may be empty)."""
        self.text += self._decoder.push(int(token))
        return self._release(final=False)

    def finish(self) -> str:
        """No more tokens: the decoder's tail and anything held back."""
        if not self.stopped:
            self.text += self._decoder.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stop and not self.stopped:
            # a stop string completed by this token starts at most `longest-1` characters
            # before the text already shown ended
            start = max(0, self.sent - self._longest + 1)
            # the first stop string in the list that has appeared, as Engine.generate picks
            # when several end on the same token
            hit = next((i for i in (self.text.find(s, start) for s in self.stop) if i >= 0),
                       None)
            if hit is not None:
                self.text = self.text[:hit]
                self.stopped = True
        end = len(self.text) if final or self.stopped else len(self.text) - self._held()
        piece = self.text[self.sent:end]
        self.sent = max(self.sent, end)
        return piece

    def _held(self) -> int:
        """How many trailing characters could still begin a stop string."""
        for k in range(min(self._longest - 1, len(self.text) - self.sent), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stop):
                return k
        return 0
