"""One generated row as text: decoded as ids arrive, cut at the first stop string, and
released to a stream only once it can no longer turn out to begin a stop string.

Works in text, not in token ids, so it serves every tokenizer: a stop string may begin or
end inside a token. The text is cut exactly before the stop string; the ids kept are those
whose text lies wholly before it (a token straddling the cut is dropped with the stop).
"""

from __future__ import annotations

from scredge.runtime.tokenizer import TextStream


class StopText:
    def __init__(self, decoder: TextStream, stops: list[str]) -> None:
        self._decoder = decoder
        self._stops = stops
        self._longest = max((len(s) for s in stops), default=0)
        self.ids: list[int] = []
        self._ends: list[int] = []  # len(text) once each id was decoded
        self.text = ""
        self.stopped = False
        self._released = 0

    def push(self, token: int) -> bool:
        """Add one id; True when it completed a stop string (the row is then done)."""
        self.ids.append(token)
        self._ends.append(len(self.text))
        self._append(self._decoder.push(token))
        return self.stopped

    def finish(self) -> None:
        """The row ended: decode what the decoder still holds (a stop may complete in it);
        that text belongs to the last id."""
        if not self.stopped:
            self._append(self._decoder.flush())

    def release(self) -> str:
        """Text not yet released that no later id can pull into a stop string."""
        end = len(self.text)
        if not self.stopped:
            end -= _partial_stop_len(self.text, self._stops)
        piece = self.text[self._released:end]
        self._released = max(self._released, end)
        return piece

    def release_all(self) -> str:
        """At the end of generation: everything left (no stop string can complete now)."""
        piece = self.text[self._released:]
        self._released = len(self.text)
        return piece

    def _append(self, piece: str) -> None:
        if not piece:
            return
        self.text += piece
        if self._ends:
            self._ends[-1] = len(self.text)
        if self._stops:
            self._find_stop(len(piece))

    def _find_stop(self, new: int) -> None:
        start = max(0, len(self.text) - new - self._longest + 1)
        hits = [i for s in self._stops if (i := self.text.find(s, start)) >= 0]
        if not hits:
            return
        cut = min(hits)
        self.text = self.text[:cut]
        keep, previous = 0, 0
        for k, end in enumerate(self._ends):
            if end > cut:
                break
            if end > previous:  # an id whose text is wholly before the cut
                keep = k + 1
            previous = end
        del self.ids[keep:]
        del self._ends[keep:]
        self.stopped = True


def _partial_stop_len(text: str, stops: list[str]) -> int:
    """How many trailing characters could still be the start of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
