"""Every JSON/text file is read through one size limit and its fields type-checked where
read (issue 30, class 2). Oracles: Python's json module on the same bytes (accepted data
is exactly json.loads'); the file system (an endless input is cut at the limit); and the
field types transformers writes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scredge.errors import ScredgeError
from scredge.files import read_json_limited, read_text_limited
from scredge.hf_config import llama_config
from scredge.limits import MAX_JSON_DEPTH
from scredge.runtime.chat import chat_messages
from scredge.tokenizer_files import check_tokenizer_config

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 64,
         "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 64, "rms_norm_eps": 1e-5}


@settings(max_examples=80, deadline=None)
@given(data=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_any_bytes_parse_as_json_does_or_are_refused(tmp_path_factory, data):
    """Oracle: json.loads on the same bytes (a string with a lone surrogate, which no UTF-8
    text can hold, refused too); only a ScredgeError otherwise."""
    path = tmp_path_factory.mktemp("j") / "f.json"
    path.write_bytes(data)
    try:
        expected = json.loads(data.decode("utf-8"))
        json.dumps(expected, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError, RecursionError):
        with pytest.raises(ScredgeError):
            read_json_limited(path, "f.json")
        return
    assert json.dumps(read_json_limited(path, "f.json")) == json.dumps(expected)


def test_endless_input_is_cut_at_the_limit():
    """/dev/zero reports size 0 and never ends: read stops at limit + 1 bytes."""
    with pytest.raises(ScredgeError, match="too large"):
        read_text_limited("/dev/zero", "the messages file", limit=1 << 16)


def test_a_file_over_the_limit_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b" " * 1025)
    with pytest.raises(ScredgeError, match="too large"):
        read_json_limited(path, "big.json", limit=1024)


@pytest.mark.parametrize("text, match", [
    ('[{"role": "user", "content": "\\ud800"}]', "lone surrogate"),
    ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "nesting"),
    ("[" * 100000, "not valid JSON"),
    ('{"role": "user"}garbage', "not valid JSON")])
def test_messages_file_refusals(tmp_path, text, match):
    """The --messages cases of the probe: a lone surrogate, absurd nesting, junk."""
    path = tmp_path / "m.json"
    path.write_text(text)
    with pytest.raises(ScredgeError, match=match):
        chat_messages("hi", True, path)


@pytest.mark.parametrize("field, value", [
    ("chat_template", [{"name": "default", "template": 5}]),
    ("chat_template", ["{{ x }}"]), ("chat_template", 7),
    ("eos_token", 5), ("eos_token", {"content": None}), ("bos_token", ["<s>"]),
    ("clean_up_tokenization_spaces", "yes")])
def test_tokenizer_config_wrong_types_are_named(field, value):
    with pytest.raises(ScredgeError, match=field):
        check_tokenizer_config({field: value}, "tokenizer_config.json")


def test_tokenizer_config_as_transformers_writes_it_passes():
    data = {"eos_token": {"content": "</s>", "lstrip": False}, "bos_token": "<s>",
            "chat_template": [{"name": "default", "template": "{{ x }}"}],
            "clean_up_tokenization_spaces": False}
    assert check_tokenizer_config(data, "t") is data


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(sorted(LLAMA)),
       value=st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
       | st.text(max_size=5) | st.lists(st.integers(), max_size=3)
       | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
def test_hf_config_any_field_value_maps_or_is_refused(key, value):
    """Oracle: the mapping returns a config or raises ScredgeError, whatever one field
    holds (before: TypeError/KeyError tracebacks, or a 2**40 hidden size accepted)."""
    hf = {**LLAMA, key: value}
    try:
        config = llama_config(hf, None)
    except ScredgeError:
        return
    assert config.d_model == hf["hidden_size"] and config.vocab_size == hf["vocab_size"]


def test_absurd_model_sizes_are_refused():
    with pytest.raises(ScredgeError, match="d_model"):
        llama_config({**LLAMA, "hidden_size": 2**40, "num_attention_heads": 2**20}, None)
