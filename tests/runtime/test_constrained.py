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
                                           "age": {"type": "integer", "minimum": 0,
                                                   "maximum": 150}},
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
    assert set(value) == {"name", "age"} and 0 <= value["age"] <= 150
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


def _nested(depth: int) -> dict:
    schema: dict = {}
    for _ in range(depth):
        schema = {"items": schema}
    return schema


@pytest.mark.parametrize("bad", [Grammar.regex("(["), Grammar.lark("start: undefined_rule"),
                                 Grammar.json_schema({"type": "nonsense"}),
                                 Grammar.json_schema("{not json"),
                                 # nested 5000 deep, as text and as a dict (before: a
                                 # RecursionError traceback); MAX_JSON_DEPTH bounds both
                                 Grammar.json_schema('{"items": ' * 5000 + "{}" + "}" * 5000),
                                 Grammar.json_schema(_nested(5000)),
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


# ---- through the batching core and the Engine -------------------------------------------
def test_engine_outputs_follow_the_grammar(tiny_artifact):
    """Oracle: json.loads + the schema, re.fullmatch. The byte-level `tiny` model (its
    own choices are prose bytes) answers with the schema's JSON, the regex, a Lark
    grammar; greedy and sampled; the row ends when the grammar is complete (finish
    'stop', well before the budget)."""
    from scredge.runtime import Engine
    from scredge.runtime.constrained import Grammar

    engine = Engine.load(tiny_artifact[1])
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA,
                                                  "strict": True}}
    for kw in (dict(temperature=0), dict(temperature=0.8, seed=4)):
        r = engine.generate("Once upon a time", 120, response_format=fmt, **kw)
        assert r.finish_reason == "stop"
        value = json.loads(r.text)
        assert set(value) == {"name", "age"} and len(value["name"]) <= 8
        r = engine.generate("Once", 40, grammar=Grammar.regex(r"(yes|no), [0-9]{2}"), **kw)
        assert re.fullmatch(r"(yes|no), [0-9]{2}", r.text) and r.finish_reason == "stop"
    r = engine.generate("Once", 40, grammar='start: "A" | "B" "C"', temperature=0)
    assert r.text in ("A", "BC")
    pieces = list(engine.stream("Once upon", 120, response_format={"type": "json_object"},
                                temperature=0))
    assert isinstance(json.loads("".join(pieces)), dict)


def test_one_batch_mixes_constrained_and_free_rows(tiny_artifact):
    """Oracle: each row alone. One batch holds a free greedy row, a row with a regex and
    a sampled free row; the free rows equal their generations alone (the grammar of
    another row changes nothing for them), the constrained row matches its regex."""
    from scredge.runtime import Engine
    from scredge.runtime.batch import Request
    from scredge.runtime.constrained import Grammar
    from scredge.sampling import GREEDY, SamplingParams

    engine = Engine.load(tiny_artifact[1])
    prompts = [engine.tokenizer.encode(t) for t in ("Once upon", "The cat", "In the end")]
    compiled = engine.compile_grammar(grammar=Grammar.regex(r"[a-z]{3,12}\."))
    sampled = SamplingParams(temperature=0.9)
    batch = engine.batch()
    batch.admit([Request(prompts[0], GREEDY, max_tokens=30),
                 Request(prompts[1], GREEDY, max_tokens=30,
                         logits_processor=engine.constraint(compiled)),
                 Request(prompts[2], sampled, seed=2, max_tokens=30)])
    rows = list(batch.rows)
    while batch.rows:
        batch.retire()
        if batch.rows:
            batch.step()
    assert rows[0].ids == engine.generate(prompts[0], 30, temperature=0, ignore_eos=True).ids
    assert rows[2].ids == engine.generate(prompts[2], 30, temperature=0.9, seed=2).ids
    assert re.fullmatch(r"[a-z]{3,12}\.", rows[1].text)


def test_constrained_with_speculation(tiny_artifact):
    """Oracle: greedy constrained decoding without speculation. Drafts the grammar forbids
    are rejected; the output is the same JSON."""
    from scredge.runtime import Engine

    engine = Engine.load(tiny_artifact[1])
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}
    plain = engine.generate('{"name": "ab', 300, temperature=0, response_format=fmt)
    spec = engine.generate('{"name": "ab', 300, temperature=0, response_format=fmt,
                           speculative="ngram", speculative_k=3)
    assert spec.ids == plain.ids and json.loads(spec.text)


def test_engine_refuses_bad_formats(tiny_artifact):
    """Oracle: the documented refusals (ScredgeError, before any model call)."""
    from scredge.runtime import Engine

    engine = Engine.load(tiny_artifact[1])
    for kw in (dict(response_format={"type": "json_schema", "json_schema": {
                    "schema": {"type": "objekt"}}}),
               dict(grammar="start: missing"), dict(response_format={"type": "xml"}),
               dict(response_format={"type": "json_object"}, grammar='start: "a"')):
        with pytest.raises(ScredgeError):
            engine.generate("Once", 8, **kw)
