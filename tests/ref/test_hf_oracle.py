"""Oracle nobody here wrote: Hugging Face transformers, built offline from the same config
and weights. With scr_layers = [] and window = null the model is a Llama; with a window it
is a Mistral-style sliding-window Llama (key q visible to query p iff p - W < q <= p)."""

from __future__ import annotations

import pytest
import torch

from scredge.ref import build_model

transformers = pytest.importorskip("transformers", reason="transformers (dev extra) not installed")


def hf_kwargs(c):
    return dict(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff,
        num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads, rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta,
        max_position_embeddings=4096, tie_word_embeddings=c.tie_embeddings,
        attention_dropout=0.0,
    )


def compare(ours, theirs, start):
    result = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not result.unexpected_keys
    # HF lists the tied lm_head.weight in its state dict; it shares the embedding tensor.
    assert result.missing_keys == (["lm_head.weight"] if ours.config.tie_embeddings else [])
    if ours.config.tie_embeddings:
        assert theirs.lm_head.weight.data_ptr() == theirs.model.embed_tokens.weight.data_ptr()
    theirs.eval()
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(start, start + 40).expand(2, 40)
    mine, _ = ours(ids, pos)
    with torch.no_grad():
        ref = theirs(input_ids=ids, position_ids=pos, use_cache=False).logits
    torch.testing.assert_close(mine, ref.float(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("start", [0, 17])
def test_matches_llama(micro, tied, start):
    """logits within 1e-5 of transformers.LlamaForCausalLM."""
    c = micro.with_(scr_layers=(), window=None, tie_embeddings=tied)
    ours = build_model(c, seed=11)
    cfg = transformers.LlamaConfig(**hf_kwargs(c), attention_bias=False, mlp_bias=False)
    cfg._attn_implementation = "eager"
    compare(ours, transformers.LlamaForCausalLM(cfg), start)


@pytest.mark.parametrize("window", [1, 6])
def test_window_matches_mistral_sliding_window(micro, window):
    """logits within 1e-5 of transformers.MistralForCausalLM with sliding_window = W."""
    c = micro.with_(scr_layers=(), window=window)
    ours = build_model(c, seed=12)
    cfg = transformers.MistralConfig(**hf_kwargs(c), sliding_window=window,
                                     head_dim=c.head_dim)
    cfg._attn_implementation = "eager"
    compare(ours, transformers.MistralForCausalLM(cfg), 0)


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}  # head_dim 8: wavelengths 6, 63, 628, 6283
LINEAR = {"rope_type": "linear", "factor": 2.5}  # cover all three bands of the llama3 rule


def random_attention_biases(model, seed):
    """HF initialises biases to zero; random ones make the bias path count."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


@pytest.mark.parametrize("scaling", [LLAMA3, LINEAR], ids=["llama3", "linear"])
def test_rope_scaling_matches_llama(micro, scaling):
    """SCR_SPEC v2 rope_scaling: inv_freq bit-equal to transformers' rotary embedding, and
    logits within 1e-5 of transformers.LlamaForCausalLM built with the same rope_scaling."""
    c = micro.with_(scr_layers=(), window=None, rope_scaling=scaling)
    ours = build_model(c, seed=13)
    cfg = transformers.LlamaConfig(**hf_kwargs(c), rope_scaling=dict(scaling))
    cfg._attn_implementation = "eager"
    theirs = transformers.LlamaForCausalLM(cfg)
    assert torch.equal(ours.inv_freq, theirs.model.rotary_emb.inv_freq)
    assert not torch.equal(ours.inv_freq, build_model(c.with_(rope_scaling=None)).inv_freq)
    compare(ours, theirs, 17)


@pytest.mark.parametrize("window", [None, 6])
def test_attention_bias_matches_qwen2(micro, window):
    """SCR_SPEC v2 attention_bias: logits within 1e-5 of transformers.Qwen2ForCausalLM (q, k,
    v biases; random, not HF's zeros), full causal and with every layer sliding."""
    c = micro.with_(scr_layers=(), window=window, attention_bias=True)
    ours = random_attention_biases(build_model(c, seed=14), seed=3)
    cfg = transformers.Qwen2Config(**hf_kwargs(c), use_sliding_window=window is not None,
                                   sliding_window=window, max_window_layers=0)
    cfg._attn_implementation = "eager"
    compare(ours, transformers.Qwen2ForCausalLM(cfg), 5)
