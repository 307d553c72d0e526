"""The runtime's Hugging Face tokenizer and chat template, torch- and transformers-free.
Oracle: transformers' own tokenizer loaded from the same files (AutoTokenizer: encode,
decode, apply_chat_template)."""

from __future__ import annotations

import numpy as np
import pytest

from scredge.errors import ScredgeError
from scredge.runtime.chat import render_chat
from scredge.runtime.hf_tokenizer import HFTokenizer

TEXTS = ["Hello world", "  leading spaces and\ttabs\n\nnew lines", "héllo wörld, 世界 🙂 ok",
         "special <|im_start|>user\nhi<|im_end|> inside", ""]
MESSAGES = [{"role": "user", "content": "What is a generator?  "},
            {"role": "assistant", "content": "A function that yields values."},
            {"role": "user", "content": "Show one, in 世界 🙂"}]


@pytest.fixture(scope="module")
def pair(hf_tokenizer_dir):
    folder, hf = hf_tokenizer_dir
    from scredge.artifact import sha256_file

    # a manifest as the exporter writes it: the tokenizer reads only verified bytes
    listed = {"files": {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                        for p in folder.iterdir()}}
    return HFTokenizer.load(folder, listed, {"tokenizer": {"eos_token_ids": [2]}}), hf


@pytest.mark.parametrize("text", TEXTS)
def test_encode_and_decode_equal_transformers(pair, text):
    ours, hf = pair
    ids = ours.encode(text)
    assert ids == hf(text)["input_ids"]  # bos from the post-processor included
    assert ours.encode(text, add_special_tokens=False) == hf(
        text, add_special_tokens=False)["input_ids"]
    assert ours.decode(ids) == hf.decode(ids)


def test_long_text_encodes_as_transformers_and_within_the_length_bound(pair):
    """A text past LONG_TEXT_CHARS (encoded through encode_batch, which lets other threads
    run) gives transformers' ids, and at least len(text) / max_token_chars of them (the
    server's pre-bound before tokenizing)."""
    from scredge.runtime.hf_tokenizer import LONG_TEXT_CHARS

    ours, hf = pair
    text = ("héllo wörld, 世界 🙂 <|im_start|>user\nhi<|im_end|> " * LONG_TEXT_CHARS)[
        :LONG_TEXT_CHARS + 7]
    ids = ours.encode(text, add_special_tokens=False)
    assert ids == hf(text, add_special_tokens=False)["input_ids"]
    assert len(ids) * ours.max_token_chars >= len(text)


def test_decode_of_arbitrary_ids_equals_transformers(pair):
    """Random ids: byte tokens forming broken UTF-8, special tokens, anything a model emits."""
    ours, hf = pair
    rng = np.random.default_rng(0)
    for _ in range(20):
        ids = rng.integers(0, ours.vocab_size, size=int(rng.integers(1, 40))).tolist()
        assert ours.decode(ids) == hf.decode(ids)


@pytest.mark.parametrize("text", TEXTS[:4])
def test_stream_adds_up_to_decode_and_never_splits_a_character(pair, text):
    ours, hf = pair
    ids = ours.encode(text, add_special_tokens=False)
    stream = ours.stream_decoder()
    pieces = [stream.push(t) for t in ids] + [stream.flush()]
    assert "".join(pieces) == hf.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)
    if "🙂" in text:  # not in a 2k vocabulary: several byte tokens, one piece
        assert any(p.endswith("🙂") or "🙂" in p for p in pieces)


def test_special_tokens_and_template_read_from_the_files(pair):
    ours, hf = pair
    assert ours.special_tokens["eos_token"] == hf.eos_token == "<|im_end|>"
    assert ours.special_tokens["bos_token"] == hf.bos_token
    assert ours.chat_template == hf.chat_template and ours.eos_ids == (2,)


@pytest.mark.parametrize("n", [1, 3])
def test_chat_template_renders_as_apply_chat_template(pair, n):
    ours, hf = pair
    text = render_chat(ours.chat_template, MESSAGES[:n], ours.special_tokens)
    assert text == hf.apply_chat_template(MESSAGES[:n], tokenize=False,
                                          add_generation_prompt=True)
    ids = ours.encode(text, add_special_tokens=False)
    expected = hf.apply_chat_template(MESSAGES[:n], tokenize=True, add_generation_prompt=True)
    assert ids == list(getattr(expected, "input_ids", expected))
    no_prompt = render_chat(ours.chat_template, MESSAGES[:n], ours.special_tokens,
                            add_generation_prompt=False)
    assert no_prompt == hf.apply_chat_template(MESSAGES[:n], tokenize=False)


def test_template_globals_and_filters_as_transformers(pair):
    """tojson (no HTML escaping), namespace, dict, loop controls, strftime_now."""
    _, hf = pair
    template = ("{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index > 2 %}"
                "{% break %}{% endif %}{% set ns.n = ns.n + 1 %}{{ m | tojson }}{% endfor %}"
                "{{ ns.n }}{{ dict(a=1) | tojson }}{{ strftime_now('%Y')[:2] }}")
    msgs = [{"role": "user", "content": "<b>&</b>"}] * 3
    assert render_chat(template, msgs, {}) == hf.apply_chat_template(
        msgs, chat_template=template, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize(("template", "messages", "needle"), [
    (None, MESSAGES, "no chat template"),
    ("{{ raise_exception('Unknown role') }}", MESSAGES, "Unknown role"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", MESSAGES, "unsafe"),
    ("{{ messages.append(1) }}", MESSAGES, "refused"),
    ("{% for %}", MESSAGES, "not valid Jinja"),
    ("{{ messages }}", [{"content": "no role"}], "role"),
    ("{{ messages }}", [], "non-empty list"),
])
def test_refusals_are_scredge_errors(template, messages, needle):
    with pytest.raises(ScredgeError, match=needle):
        render_chat(template, messages, {})


def test_byte_tokenizer_stays_the_default_without_tokenizer_json(tmp_path):
    """Oracle: SCR_SPEC section 1 (UTF-8 bytes for V = 256; ids only otherwise)."""
    from types import SimpleNamespace

    from scredge.config import SCRConfig
    from scredge.runtime.tokenizer import ByteTokenizer, load_tokenizer

    art = SimpleNamespace(folder=tmp_path, config=SCRConfig(), settings={},
                          manifest={"files": {}})
    assert isinstance(load_tokenizer(art), ByteTokenizer)
    art.config = SCRConfig(vocab_size=300)
    assert load_tokenizer(art) is None
