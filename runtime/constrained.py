"""Constrained output: a grammar (JSON Schema, any JSON object, a regular expression or a
Lark grammar) decides which tokens a row may take next, with `llguidance` (torch-free, NumPy
masks; the library onnxruntime-genai, vLLM and llama.cpp use).

    grammars = Grammars(tokenizer, vocab_size)          # once per engine: the vocabulary
    grammar = grammars.compile(Grammar.json_schema({"type": "object", ...}))
    row = grammars.constraint(grammar)                  # one per row: its own parser state
    logits = row(logits)                                # -inf where the grammar forbids a token
    row.accept(token)                                   # the token the row took
    row.is_done()                                       # the grammar is complete: end the row

The llguidance tokenizer is built from the artifact's own tokenizer: its tokenizer.json
(the `tokenizers` library's serialisation, which llguidance reads itself) or the byte
tokenizer (id = byte, V = 256), which has no end-of-sequence token: a virtual one (id 256,
outside the model's vocabulary) lets the grammar say "complete", and `is_done` turns that
into the row's end. A model vocabulary larger than the tokenizer's (padding) is masked
beyond the tokenizer's last id; a smaller one cuts the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.files import check_json_value, parse_json

GRAMMAR_KINDS = ("json_schema", "json_object", "regex", "lark")
# any JSON object: what OpenAI's {"type": "json_object"} promises
JSON_OBJECT_SCHEMA = {"type": "object"}
_MAX_GRAMMAR_CHARS = 1 << 20  # a schema or grammar over a MiB is a mistake, not a format
# whitespace between JSON tokens: at most 24 characters a run (llguidance's default has no
# bound, and a model can loop on whitespace forever); a schema's "x-guidance" may override
JSON_DEFAULTS = {"whitespace_pattern": r"[ \t\n\r]{0,24}"}


@dataclass(frozen=True)
class Grammar:
    """What a row's output must match: `kind` is one of GRAMMAR_KINDS; `source` the JSON
    Schema (a dict, or its JSON text), the regular expression or the Lark grammar."""

    kind: str
    source: object = None

    @classmethod
    def json_schema(cls, schema) -> Grammar:
        return cls("json_schema", schema)

    @classmethod
    def json_object(cls) -> Grammar:
        return cls("json_object")

    @classmethod
    def regex(cls, pattern: str) -> Grammar:
        return cls("regex", pattern)

    @classmethod
    def lark(cls, text: str) -> Grammar:
        return cls("lark", text)


def grammar_from_request(response_format=None, grammar=None) -> Grammar | None:
    """The grammar a call asks for: OpenAI's `response_format` ({"type": "text"},
    {"type": "json_object"}, {"type": "json_schema", "json_schema": {"schema": {...},
    "strict": true}}), or `grammar` (a Grammar, or a Lark grammar as text); None for free
    text. Both at once is refused."""
    if grammar is not None and response_format is not None:
        raise ScredgeError("response_format and grammar are two ways to say one thing",
                           received="both", expected="at most one of them")
    if grammar is not None:
        if isinstance(grammar, str):
            return Grammar.lark(grammar)
        if not isinstance(grammar, Grammar):
            raise ScredgeError("invalid grammar", received=type(grammar).__name__,
                               expected="a Grammar (Grammar.json_schema/regex/lark/json_object)"
                                        " or a Lark grammar as text")
        return grammar
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or not isinstance(response_format.get("type"), str):
        raise ScredgeError("invalid response_format", received=repr(response_format)[:200],
                           expected='{"type": "text" | "json_object" | "json_schema", ...}')
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return Grammar.json_object()
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise ScredgeError("response_format json_schema needs its schema",
                               received=repr(spec)[:200],
                               expected='{"type": "json_schema", "json_schema": {"name": ..., '
                                        '"schema": {...}, "strict": true}}')
        return Grammar.json_schema(spec["schema"])
    raise ScredgeError("unknown response_format type", received=repr(kind),
                       expected="'text', 'json_object' or 'json_schema'")


class Grammars:
    """The llguidance tokenizer of one artifact (built once: about a second for a 49k
    vocabulary) and the grammars compiled against it."""

    def __init__(self, tokenizer, vocab_size: int) -> None:
        llg = require("llguidance")
        self._llg = llg
        self.vocab_size = vocab_size  # the model's V (the logits' last axis)
        if hasattr(tokenizer, "to_json_text"):  # HFTokenizer: its tokenizer.json
            eos = list(tokenizer.eos_ids) or None
            size = max(tokenizer.vocab_size, vocab_size)
            self.lltok = _llg_call(lambda: llg.LLTokenizer(
                tokenizer.to_json_text(), n_vocab=size, eos_token=eos),
                "the artifact's tokenizer cannot be used for constrained output")
        elif getattr(tokenizer, "vocab_size", None) == 256:  # bytes, with a virtual eos
            self.lltok = llg.LLTokenizer(llg.TokenizerWrapper(_ByteVocabulary()))
        else:
            raise ScredgeError("constrained output needs the artifact's tokenizer",
                               received=type(tokenizer).__name__,
                               expected="a Hugging Face tokenizer.json or the byte tokenizer")
        self.words = self.lltok.vocab_size  # the mask's length in tokens

    def compile(self, grammar: Grammar) -> str:
        """The llguidance grammar of `grammar`, checked against this tokenizer: an invalid
        schema, regex or Lark grammar, or one this vocabulary cannot express, is refused."""
        M = self._llg.LLMatcher
        kind, source = grammar.kind, grammar.source
        if kind not in GRAMMAR_KINDS:
            raise ScredgeError("unknown grammar kind", received=repr(kind),
                               expected=f"one of {list(GRAMMAR_KINDS)}")
        if kind in ("json_schema", "json_object"):
            schema = JSON_OBJECT_SCHEMA if kind == "json_object" else _schema(source)
            text = _llg_call(lambda: M.grammar_from_json_schema(schema, defaults=JSON_DEFAULTS),
                             "invalid JSON Schema")
        else:
            if not isinstance(source, str) or not source or len(source) > _MAX_GRAMMAR_CHARS:
                raise ScredgeError(f"invalid {kind}", received=repr(source)[:120],
                                   expected=f"a non-empty string of at most "
                                            f"{_MAX_GRAMMAR_CHARS} characters")
            text = (M.grammar_from_regex if kind == "regex" else M.grammar_from_lark)(source)
        error = M.validate_grammar(text, self.lltok)
        if error and not error.startswith("WARNING"):
            what = {"json_schema": "JSON Schema", "json_object": "JSON object grammar",
                    "regex": "regular expression", "lark": "Lark grammar"}[kind]
            raise ScredgeError(f"invalid {what} for constrained output",
                               received=error.strip()[:400],
                               expected=f"a {what} that llguidance accepts and this model's "
                                        "tokenizer can spell", fix="correct the "
                               f"{'schema' if 'JSON' in what else what}")
        return text

    def constraint(self, compiled: str) -> Constraint:
        """A fresh parser state for one row."""
        return Constraint(self._llg, self.lltok, compiled, self.vocab_size, self.words)


class Constraint:
    """One row's grammar state: a logits processor (`__call__`: -inf where the grammar
    forbids a token), `accept` for each token the row takes, `rollback` (a speculative
    step that tried tokens ahead), and `is_done` once the grammar is complete."""

    def __init__(self, llg, lltok, compiled: str, vocab_size: int, words: int) -> None:
        self._np = require("llguidance.numpy")
        self.matcher = llg.LLMatcher(lltok, compiled, log_level=0)
        if self.matcher.is_error():
            raise ScredgeError("the grammar cannot be used", received=
                               self.matcher.get_error()[:400], fix="correct the grammar")
        self.vocab_size = vocab_size
        self._bits = self._np.allocate_token_bitmask(1, words)
        self._allowed: np.ndarray | None = None  # [V] bool, for the current state

    def allowed(self) -> np.ndarray:
        """[V] bool: the tokens the grammar allows next (computed once per state)."""
        if self._allowed is None:
            self._np.fill_next_token_bitmask(self.matcher, self._bits)
            bits = np.unpackbits(self._bits.view(np.uint8), bitorder="little")
            allowed = np.zeros(self.vocab_size, dtype=bool)
            n = min(self.vocab_size, bits.size)
            allowed[:n] = bits[:n]
            self._allowed = allowed
        return self._allowed

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """logits [V] (changed in place) -> the same array, -inf where forbidden."""
        logits[~self.allowed()] = -np.inf
        return logits

    def accept(self, token: int) -> None:
        self._allowed = None
        if not self.matcher.consume_token(int(token)):
            raise ScredgeError("a token the grammar forbids was taken",
                               received=f"id {int(token)}: {self.matcher.get_error()[:300]}",
                               expected="a token from the grammar's mask")

    def rollback(self, count: int) -> None:
        """Undo the last `count` accepted tokens."""
        if count:
            self._allowed = None
            self.matcher.rollback(int(count))

    def is_done(self) -> bool:
        """The grammar is complete: it takes no further token of the model's vocabulary
        (llguidance stopped, or only an end-of-sequence id outside the vocabulary is left)."""
        if self.matcher.is_stopped():
            return True
        return self.matcher.is_accepting() and not self.allowed().any()


def _schema(source) -> dict:
    if isinstance(source, str):
        if len(source) > _MAX_GRAMMAR_CHARS:
            raise ScredgeError("JSON Schema too long", received=f"{len(source)} characters",
                               expected=f"at most {_MAX_GRAMMAR_CHARS}")
        source = parse_json(source, "the schema", "the JSON Schema",
                            fix="pass the schema as a JSON object")
    elif isinstance(source, dict) and (problem := check_json_value(source)):
        # the same bounds as a schema given as text (the server's body, a --json-schema
        # file): llguidance walks the schema recursively
        raise ScredgeError("invalid JSON Schema", received=problem,
                           fix="pass the schema as a JSON object")
    if not isinstance(source, (dict, bool)):
        raise ScredgeError("invalid JSON Schema", received=type(source).__name__,
                           expected="a JSON object (dict)")
    return source if isinstance(source, dict) else ({} if source else {"not": {}})


def _llg_call(fn, what: str):
    """llguidance raises ValueError (and its own errors) on bad input: one ScredgeError."""
    try:
        return fn()
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ScredgeError(what, received=str(exc)[:400]) from exc


class _ByteVocabulary:
    """The byte tokenizer as llguidance's TokenizerWrapper reads it: ids 0..255 are bytes,
    id 256 a virtual end-of-sequence (the model never produces it; `is_done` reads it)."""

    eos_token_id = 256
    bos_token_id = None
    tokens = [bytes([i]) for i in range(256)] + [b"<|eos|>"]
    special_token_ids = [256]

    def __call__(self, text) -> list[int]:
        return list(text if isinstance(text, bytes) else text.encode("utf-8"))
