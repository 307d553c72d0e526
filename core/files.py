"""Reading a JSON or text file named by the user or found in a folder: through a size
limit (a lying size, a FIFO or /dev/zero included), strict UTF-8, no lone surrogates, a
bounded nesting depth. Every such read in scredge goes through `read_bytes_limited`,
`read_text_limited` or `read_json_limited`; each failure is a ScredgeError naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from scredge.errors import ScredgeError
from scredge.limits import MAX_JSON_BYTES, MAX_JSON_DEPTH, MAX_TEXT_BYTES


def read_bytes_limited(path: str | Path, what: str, limit: int, fix: str | None = None
                       ) -> bytes:
    """At most `limit` bytes of `path`, refusing a larger file (its size is checked before
    reading, and the read itself stops at limit + 1 bytes for endless inputs)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_size > limit:
                raise _too_large(path, what, st.st_size, limit, fix)
            data = f.read(limit + 1)
    except OSError as exc:
        raise ScredgeError(f"cannot read {what}", received=f"{path}: {exc.strerror or exc}",
                           fix=fix or "check the path") from exc
    if len(data) > limit:
        raise _too_large(path, what, f"more than {limit}", limit, fix)
    return data


def _too_large(path: Path, what: str, size, limit: int, fix: str | None) -> ScredgeError:
    return ScredgeError(f"{what} is too large", received=f"{path}: {size} bytes",
                        expected=f"at most {limit} bytes", fix=fix or "check the file")


def decode_text(data: bytes, path: str | Path, what: str, fix: str | None = None) -> str:
    """Strict UTF-8 (a lone surrogate's bytes are invalid UTF-8 too)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScredgeError(f"{what} is not UTF-8 text", received=f"{path}: {exc}"[:300],
                           fix=fix or "save it as UTF-8") from exc


def read_text_limited(path: str | Path, what: str, limit: int = MAX_TEXT_BYTES,
                      fix: str | None = None) -> str:
    return decode_text(read_bytes_limited(path, what, limit, fix), path, what, fix)


def parse_json(data: bytes | str, source: str, what: str, fix: str | None = None,
               expected: str = "JSON") -> object:
    """JSON text -> Python data: valid UTF-8, nesting at most MAX_JSON_DEPTH, no lone
    surrogate in any string (JSON escapes can spell one; no UTF-8 text holds it)."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSON and UTF-8 errors; absurd nesting
        raise ScredgeError(f"{what} is malformed (not valid JSON)",
                           received=f"{source}: {exc}"[:300], expected=expected,
                           fix=fix) from exc
    problem = check_json_value(value)
    if problem:
        raise ScredgeError(f"{what} is malformed (data scredge does not accept)",
                           received=f"{source}: {problem}"[:300], expected=expected, fix=fix)
    return value


def read_json_limited(path: str | Path, what: str, limit: int = MAX_JSON_BYTES,
                      fix: str | None = None, expected: str = "JSON") -> object:
    data = read_bytes_limited(path, what, limit, fix)
    decode_text(data, path, what, fix)  # a UTF-8 error named as such, not as a JSON one
    return parse_json(data, str(path), what, fix, expected)


def check_json_value(value: object) -> str | None:
    """The first problem of parsed JSON: too deep, or a string with a lone surrogate."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not _is_unicode(item):
                return f"a string with a lone surrogate: {ascii(item)[:80]}"
        elif isinstance(item, (dict, list)):
            if depth >= MAX_JSON_DEPTH:
                return f"nesting deeper than {MAX_JSON_DEPTH} levels"
            children = item.items() if isinstance(item, dict) else ((None, v) for v in item)
            for k, v in children:
                if k is not None:
                    stack.append((k, depth + 1))
                stack.append((v, depth + 1))
    return None


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
