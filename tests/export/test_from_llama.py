"""`--from-llama`: tiny random transformers Llama / Mistral / Qwen2 models saved with
save_pretrained, retrofitted with SCR at gamma = 0. Oracle: transformers' own logits for the
same ids. (The exported graphs of each family are checked against transformers in
tests/runtime/test_hf_generate.py, which exports them once.)"""

from __future__ import annotations

import json
import re

import pytest
import torch
from hf_models import save_family

from scredge.errors import ScredgeError
from scredge.export.sources import from_llama

transformers = pytest.importorskip("transformers", reason="transformers (dev extra) not installed")


def save_llama(folder, **overrides):
    cfg = transformers.LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
        max_position_embeddings=256, tie_word_embeddings=False, rope_theta=500.0, **overrides)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return model


@pytest.mark.parametrize(("edit", "needle"), [
    ({"architectures": ["GPT2LMHeadModel"]}, "unsupported Hugging Face architecture"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"attention_bias": True}, "attention_bias=true on a llama model"),
    ({"mlp_bias": True}, "mlp_bias=true"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope scaling 'yarn'"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0, "beta_fast": 3}},
     "rope settings ['beta_fast']"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                          "partial_rotary_factor": 0.5}}, "partial_rotary_factor=0.5"),
    ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "use_sliding_window": True,
      "sliding_window": 4, "max_window_layers": 1}, "layer_types mixing"),
    ({"model_type": "gemma"}, "unsupported Hugging Face model_type"),
])
def test_unsupported_configs_name_the_field(tmp_path, edit, needle):
    save_llama(tmp_path)
    path = tmp_path / "config.json"
    cfg = json.loads(path.read_text())
    if "rope_scaling" in edit:
        cfg.pop("rope_parameters", None)
    if edit.get("model_type") == "qwen2":
        cfg.pop("layer_types", None)  # let the qwen2 default rule decide the layers
    path.write_text(json.dumps({**cfg, **edit}))
    with pytest.raises(ScredgeError, match=re.escape(needle)):
        from_llama(tmp_path)


def test_missing_weights_and_folder(tmp_path):
    save_llama(tmp_path)
    from safetensors.torch import load_file, save_file

    (weights,) = tmp_path.glob("*.safetensors")
    tensors = load_file(str(weights))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(ScredgeError, match=r"missing(.|\n)*layers\.1\.mlp\.up_proj\.weight"):
        from_llama(tmp_path)
    with pytest.raises(ScredgeError, match="no config.json"):
        from_llama(tmp_path / "nowhere")


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def reference_logits_match(folder, hf):
    """from_llama's reference model vs transformers on the same ids (past position 64, so
    every llama3 band and the sliding window count)."""
    src = from_llama(folder, seed=3)
    ids = torch.randint(0, 300, (2, 90), generator=torch.Generator().manual_seed(4))
    pos = torch.arange(90).expand(2, 90)
    with torch.no_grad():
        expected = hf(input_ids=ids, position_ids=pos, use_cache=False).logits
        mine, _ = src.model(ids, pos)
    torch.testing.assert_close(mine, expected, rtol=0, atol=1e-5)
    return src.model.config


@pytest.mark.parametrize(("family", "overrides", "expect"), [
    ("llama", {"rope_scaling": LLAMA3}, {"rope_scaling": LLAMA3}),
    ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 3.0}},
     {"rope_scaling": {"rope_type": "linear", "factor": 3.0}}),
    ("mistral", {"sliding_window": 6}, {"window": 6}),
    ("qwen2", {"tie_word_embeddings": True}, {"attention_bias": True, "window": None}),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 0},
     {"attention_bias": True, "window": 5}),
], ids=["llama3-rope", "linear-rope", "mistral-window", "qwen2-tied", "qwen2-window"])
def test_families_match_transformers(tmp_path, family, overrides, expect):
    """Oracle: transformers' logits for the saved model, 1e-5 (reference after from_llama)."""
    hf = save_family(tmp_path, family, **overrides)
    config = reference_logits_match(tmp_path, hf)
    for key, value in expect.items():
        got = getattr(config, key)
        assert (got.to_dict() if hasattr(got, "to_dict") else got) == value


def test_rope_scaling_beside_default_rope_parameters_is_applied(tmp_path):
    """A config.json with rope_parameters (default) AND rope_scaling (linear): transformers
    runs the linear scaling, so the export must too. Oracle: AutoModelForCausalLM loaded
    from the same folder."""
    save_family(tmp_path, "llama")
    path = tmp_path / "config.json"
    cfg = json.loads(path.read_text())
    assert cfg["rope_parameters"]["rope_type"] == "default"
    cfg["rope_scaling"] = {"type": "linear", "factor": 4.0}
    path.write_text(json.dumps(cfg))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert hf.config.rope_parameters["rope_type"] == "linear"
    config = reference_logits_match(tmp_path, hf)
    assert config.rope_scaling.to_dict() == {"rope_type": "linear", "factor": 4.0}


def test_a_folder_without_tokenizer_json_has_no_tokenizer(tmp_path):
    """The byte tokenizer (or ids only) stays the default: nothing to copy."""
    save_llama(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{}")
    assert from_llama(tmp_path).tokenizer is None


def test_a_tokenizer_larger_than_the_model_is_refused(tmp_path, bpe_tokenizer):
    """vocab 300 model, 2048-token tokenizer: ids the model cannot take."""
    save_llama(tmp_path)
    bpe_tokenizer.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ScredgeError, match="more tokens than the model"):
        from_llama(tmp_path)
