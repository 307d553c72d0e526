"""SCRConfig: presets, JSON round trip, and the bad-input errors. Oracle: SCR_SPEC section 1."""

from __future__ import annotations

import json

import pytest

from scredge.config import PRESETS, SCRConfig
from scredge.errors import ScredgeError


def test_presets_match_the_spec():
    """Oracle: the preset table of SCR_SPEC section 1, typed in by hand."""
    tiny = SCRConfig.preset("tiny")
    assert (tiny.vocab_size, tiny.d_model, tiny.n_layers, tiny.n_heads, tiny.n_kv_heads) == (
        256, 128, 4, 4, 2)
    assert (tiny.d_ff, tiny.window, tiny.rope_theta, tiny.norm_eps) == (384, 128, 1e4, 1e-5)
    assert tiny.scr_layers == (0, 1, 2, 3) and tiny.tie_embeddings and tiny.kappa == 8.0
    small = SCRConfig.preset("small")
    assert (small.d_model, small.n_layers, small.n_heads, small.n_kv_heads) == (512, 8, 8, 4)
    assert (small.d_ff, small.window, small.scr_layers) == (1536, 512, tuple(range(8)))
    assert small.tie_embeddings and small.rope_theta == 1e4


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(name, tmp_path):
    """Oracle: equality of the dataclass after to_json -> file -> load."""
    cfg = SCRConfig.preset(name)
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    assert SCRConfig.load(path) == cfg
    # an artifact's config.json nests the fields under "model"
    path.write_text(json.dumps({"model": cfg.to_dict(), "export": {"dtype": "float32"}}))
    assert SCRConfig.load(path) == cfg


def test_derived_fields():
    """Oracle: hand arithmetic from the spec's notation."""
    c = SCRConfig.preset("tiny")
    assert c.head_dim == 32 and c.kv_groups == 2 and c.max_cache == 127
    assert c.present_len(0, 10) == 10 and c.present_len(120, 30) == 127
    assert c.with_(window=None).present_len(120, 30) == 150
    shapes = c.parameter_shapes()
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (64, 128)
    assert shapes["model.layers.3.scr.proj.weight"] == (128, 128)
    assert "lm_head.weight" not in shapes
    assert "lm_head.weight" in c.with_(tie_embeddings=False).parameter_shapes()
    assert not any(".scr." in k for k in c.with_(scr_layers=()).parameter_shapes())


def test_unknown_preset():
    with pytest.raises(ScredgeError, match=r"unknown preset(.|\n)*'huge'(.|\n)*small"):
        SCRConfig.preset("huge")


@pytest.mark.parametrize(
    ("changes", "field", "accepted"),
    [
        ({"d_model": 130}, "n_heads", "divisor of d_model=130"),
        ({"n_kv_heads": 3}, "n_kv_heads", "divisor of n_heads=4"),
        ({"window": 0}, "window", "integer >= 1"),
        ({"window": -4}, "window", "integer >= 1"),
        ({"window": 2.5}, "window", "integer >= 1"),
        ({"scr_layers": (0, 9)}, "scr_layers", "0..3"),
        ({"scr_layers": (1, 1)}, "scr_layers", "no repeats"),
        ({"d_model": 0}, "d_model", "positive integer"),
        ({"vocab_size": True}, "vocab_size", "positive integer"),
        ({"kappa": 0.0}, "kappa", "> 0"),
        ({"norm_eps": float("nan")}, "norm_eps", "finite"),
        ({"d_model": 120, "n_heads": 8, "n_kv_heads": 4}, "n_heads", "even"),
    ],
)
def test_bad_fields_name_the_field_and_accepted_values(changes, field, accepted):
    with pytest.raises(ScredgeError) as info:
        SCRConfig.preset("tiny").with_(**changes)
    msg = str(info.value)
    assert f"'{field}'" in msg and accepted in msg


def test_malformed_json_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"d_model": 128,,}')
    with pytest.raises(ScredgeError, match=r"not valid JSON(.|\n)*line 1"):
        SCRConfig.load(path)


def test_unknown_and_missing_fields(tmp_path):
    d = SCRConfig.preset("tiny").to_dict()
    with pytest.raises(ScredgeError, match=r"unknown model fields(.|\n)*hidden_size"):
        SCRConfig.from_dict({**d, "hidden_size": 128})
    del d["kappa"]
    with pytest.raises(ScredgeError, match=r"lacks model fields(.|\n)*kappa"):
        SCRConfig.from_dict(d)
    with pytest.raises(ScredgeError, match="JSON object"):
        SCRConfig.from_dict([1, 2])
    with pytest.raises(ScredgeError, match="cannot read config file"):
        SCRConfig.load(tmp_path / "absent.json")


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}


def test_v2_fields_absent_mean_v1_and_round_trip(tmp_path):
    """Oracle: SCR_SPEC section 1, v2 fields (absent = v1 behaviour; the spec's JSON form)."""
    tiny = SCRConfig.preset("tiny")
    assert tiny.rope_scaling is None and tiny.attention_bias is False
    assert "rope_scaling" not in tiny.to_dict() and "attention_bias" not in tiny.to_dict()
    v2 = tiny.with_(rope_scaling=LLAMA3, attention_bias=True)
    assert v2.to_dict()["rope_scaling"] == LLAMA3 and v2.to_dict()["attention_bias"] is True
    path = tmp_path / "c.json"
    path.write_text(v2.to_json())
    assert SCRConfig.load(path) == v2
    linear = tiny.with_(rope_scaling={"rope_type": "linear", "factor": 4.0})
    assert linear.to_dict()["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    hash(v2)  # still a frozen, hashable config
    shapes = v2.parameter_shapes()
    assert shapes["model.layers.0.self_attn.q_proj.bias"] == (128,)
    assert shapes["model.layers.0.self_attn.k_proj.bias"] == (64,)
    assert "model.layers.0.self_attn.o_proj.bias" not in shapes


@pytest.mark.parametrize(("scaling", "needle"), [
    ({"rope_type": "yarn", "factor": 2.0}, "'rope_scaling'"),
    ({"rope_type": "linear"}, "missing: ['factor']"),
    ({"rope_type": "linear", "factor": 2.0, "low_freq_factor": 1.0},
     "unknown: ['low_freq_factor']"),
    ({"rope_type": "linear", "factor": 0.0}, "'rope_scaling.factor'"),
    ({**LLAMA3, "high_freq_factor": 1.0}, "greater than low_freq_factor"),
    ({**LLAMA3, "original_max_position_embeddings": 8.5}, "positive integer"),
    ("linear", "'rope_scaling'"),
])
def test_bad_rope_scaling_names_the_field(scaling, needle):
    with pytest.raises(ScredgeError, match="rope_scaling") as info:
        SCRConfig.preset("tiny").with_(rope_scaling=scaling)
    assert needle in str(info.value)


def test_bad_attention_bias():
    with pytest.raises(ScredgeError, match="'attention_bias'(.|\n)*true or false"):
        SCRConfig.preset("tiny").with_(attention_bias=1)
