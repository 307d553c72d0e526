"""The one exception type users see.

Every user-facing failure (bad config, bad checkpoint, missing optional
dependency, bad CLI input) is a `ScredgeError` whose message reads
"what | received | expected | fix", so the reader knows what went wrong, with
what value, what would have been accepted, and what to do about it.
Internal invariants still use `assert`.
"""

from __future__ import annotations


class ScredgeError(Exception):
    """A user error: bad input, bad file, missing dependency."""

    def __init__(
        self,
        what: str,
        *,
        received: object = None,
        expected: object = None,
        fix: str | None = None,
    ) -> None:
        self.what = what
        self.received = received
        self.expected = expected
        self.fix = fix
        super().__init__(self._format())

    def _format(self) -> str:
        lines = [self.what]
        if self.received is not None:
            lines.append(f"  received: {self.received}")
        if self.expected is not None:
            lines.append(f"  expected: {self.expected}")
        if self.fix is not None:
            lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)
