"""`--from-llama`: a tiny random transformers.LlamaForCausalLM saved with save_pretrained,
retrofitted with SCR at gamma = 0. Oracle: transformers' own logits for the same ids."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scredge.errors import ScredgeError
from scredge.export.pipeline import export_artifact
from scredge.export.sources import from_llama
from scredge.runtime.cache import empty_state

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


def test_exported_logits_equal_transformers(tmp_path, ort_decoder):
    hf = save_llama(tmp_path / "llama")
    src = from_llama(tmp_path / "llama", scr_layers=None, seed=1)
    assert src.model.config.scr_layers == (0, 1) and src.model.config.window is None
    out = export_artifact(src.model, tmp_path / "art", source=src.description)
    ids = torch.randint(0, 300, (2, 11), generator=torch.Generator().manual_seed(2))
    pos = torch.arange(11).expand(2, 11)
    with torch.no_grad():
        expected = hf(input_ids=ids, position_ids=pos, use_cache=False).logits.numpy()
    outs, _ = ort_decoder(out / "model.onnx")(ids.numpy(), pos.numpy(),
                                              empty_state(src.model.config, 2))
    np.testing.assert_allclose(outs["logits"], expected, atol=1e-4, rtol=0)
    config = json.loads((out / "config.json").read_text())
    assert config["export"]["source"]["kind"] == "huggingface"


@pytest.mark.parametrize(("edit", "needle"), [
    ({"architectures": ["GPT2LMHeadModel"]}, "unsupported Hugging Face architecture"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"attention_bias": True}, "attention_bias=true"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling 'linear'"),
])
def test_unsupported_configs_name_the_field(tmp_path, edit, needle):
    save_llama(tmp_path)
    path = tmp_path / "config.json"
    cfg = json.loads(path.read_text())
    cfg.pop("rope_parameters", None) if "rope_scaling" in edit else None
    path.write_text(json.dumps({**cfg, **edit}))
    with pytest.raises(ScredgeError, match=needle):
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
