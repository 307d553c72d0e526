"""Constrained output's parts (runtime/constrained.py). Oracles: the grammar's own language
(a string in it is spelled token by token through the mask; one outside it is masked out),
Python's json and re modules on what a random walk through the mask produces, and
llguidance's own error for a bad schema, regex or grammar (a ScredgeError here)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from scredge.errors import ScredgeError

pytest.importorskip("llguidance", reason="llguidance (ort extra) not installed")

from scredge.runtime.constrained import (  # noqa: E402
    Grammar,
    Grammars,
    grammar_from_request,
)
from scredge.runtime.tokenizer import ByteTokenizer  # noqa: E402

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def byte_grammars():
    return Grammars(ByteTokenizer(), 256)


def _random_walk(grammars, grammar, vocab, seed, limit=200) -> list[int]:
    """Random logits each step, masked: what an untrained model would produce."""
    row = grammars.constraint(grammars.compile(grammar))
    rng = np.random.default_rng(seed)
    out = []
    while not row.is_done() and len(out) < limit:
        logits = row(rng.normal(size=vocab).astype(np.float32))
        token = int(np.argmax(logits))
        assert np.isfinite(logits[token])
        row.accept(token)
        out.append(token)
    assert row.is_done(), "the grammar must end the row"
    return out


@pytest.mark.parametrize("seed", range(5))
def test_byte_walks_match_schema_and_regex(byte_grammars, seed):
    """Oracle: json.loads + the schema's rules, and re.fullmatch. Random logits through
    the byte tokenizer's mask give valid JSON of the schema and a regex match."""
    ids = _random_walk(byte_grammars, Grammar.json_schema(SCHEMA), 256, seed)
    value = json.loads(bytes(ids).decode())
    assert set(value) == {"name", "age"} and isinstance(value["age"], int)
    assert len(value["name"]) <= 8
    ids = _random_walk(byte_grammars, Grammar.regex(r"[a-c]{2,4}-[0-9]+\.!"), 256, seed)
    assert re.fullmatch(r"[a-c]{2,4}-[0-9]+\.!", bytes(ids).decode())


def test_mask_allows_exactly_the_language(byte_grammars):
    """Oracle: the regex. After 'ab' only 'c' continues 'abc|abd?'... spelled out."""
    row = byte_grammars.constraint(byte_grammars.compile(Grammar.regex("ab(c|d)")))
    assert np.flatnonzero(row.allowed()).tolist() == [ord("a")]
    row.accept(ord("a"))
    row.accept(ord("b"))
    assert np.flatnonzero(row.allowed()).tolist() == [ord("c"), ord("d")]
    row.accept(ord("d"))
    assert row.is_done()
    with pytest.raises(ScredgeError):  # a token outside the mask
        fresh = byte_grammars.constraint(byte_grammars.compile(Grammar.regex("ab")))
        fresh.accept(ord("z"))


def test_rollback_restores_the_mask(byte_grammars):
    """Oracle: the mask before the tokens were taken."""
    row = byte_grammars.constraint(byte_grammars.compile(Grammar.json_object()))
    first = row.allowed().copy()
    for ch in b'{"a"':
        row.accept(ch)
    row.rollback(4)
    assert (row.allowed() == first).all()


def test_padded_vocabulary_is_masked(byte_grammars):
    """A model V larger than the tokenizer's: the extra ids are never allowed."""
    g = Grammars(ByteTokenizer(), 300)
    row = g.constraint(g.compile(Grammar.regex("[a-z]+")))
    logits = row(np.zeros(300, dtype=np.float32))
    assert np.isinf(logits[256:]).all() and np.isfinite(logits[ord("q")])


@pytest.mark.parametrize("bad", [Grammar.regex("(["), Grammar.lark("start: undefined_rule"),
                                 Grammar.json_schema({"type": "nonsense"}),
                                 Grammar.json_schema("{not json"),
                                 Grammar.lark('start: <|no_such_token|> "a"'),
                                 Grammar("xml", "<a/>")])
def test_bad_grammars_are_refused(byte_grammars, bad):
    """Oracle: llguidance's validation (and the special token the byte tokenizer lacks:
    a grammar the tokenizer cannot express)."""
    with pytest.raises(ScredgeError):
        byte_grammars.compile(bad)


def test_response_format_mapping():
    """Oracle: OpenAI's response_format shapes."""
    assert grammar_from_request({"type": "text"}) is None
    assert grammar_from_request({"type": "json_object"}).kind == "json_object"
    g = grammar_from_request({"type": "json_schema",
                              "json_schema": {"name": "p", "schema": SCHEMA, "strict": True}})
    assert g == Grammar.json_schema(SCHEMA)
    assert grammar_from_request(grammar='start: "x"') == Grammar.lark('start: "x"')
    for bad in ({"type": "yaml"}, {"type": "json_schema"}, "json", {"no": "type"}):
        with pytest.raises(ScredgeError):
            grammar_from_request(bad)
    with pytest.raises(ScredgeError):
        grammar_from_request({"type": "json_object"}, grammar="start: x")


def test_hf_tokenizer_walk(bpe_tokenizer, tmp_path):
    """Oracle: json.loads on the decoded text. The artifact's BPE tokenizer.json (2048
    tokens, eos <|im_end|>) drives the mask; multi-byte tokens are allowed where they fit."""
    from scredge.runtime.hf_tokenizer import HFTokenizer

    eos = bpe_tokenizer.token_to_id("<|im_end|>")
    tok = HFTokenizer(bpe_tokenizer, {}, None, (eos,), {})
    g = Grammars(tok, 2048)
    for seed in range(3):
        ids = _random_walk(g, Grammar.json_schema(SCHEMA), 2048, seed)
        text = tok.decode([i for i in ids if i != eos])
        assert set(json.loads(text)) == {"name", "age"}
