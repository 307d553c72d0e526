"""A batch of three prompts of different lengths through the exported graph's
`attention_mask` (SCR_SPEC section 3, v2). Oracle: transformers' own left-padded batched
`generate` (greedy) on a small random LlamaForCausalLM, exported with --from-llama and SCR
at gamma = 0 (an exact identity); ids as prompts, no tokenizer."""

from __future__ import annotations

import pytest
import torch

from scredge.export.pipeline import export_artifact
from scredge.export.sources import from_llama
from scredge.runtime import Engine

transformers = pytest.importorskip("transformers", reason="transformers (dev extra) not installed")

PROMPTS = [[11, 12, 13], [40, 41, 42, 43, 44, 45, 46, 47, 48], [200, 7, 99, 5, 250, 31]]
NEW = 24
PAD = 0


def test_batched_generate_equals_transformers_left_padded(tmp_path):
    """SCR on every layer (gamma = 0): the carries are joined too, and must change nothing."""
    cfg = transformers.LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
        max_position_embeddings=256, tie_word_embeddings=False, rope_theta=500.0,
        bos_token_id=None, eos_token_id=None, pad_token_id=PAD, initializer_range=0.2)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path / "llama", safe_serialization=True)
    src = from_llama(tmp_path / "llama", scr_layers=None, seed=1)  # --scr-layers all
    assert src.model.config.scr_layers == (0, 1)
    folder = export_artifact(src.model, tmp_path / "art", source=src.description)

    width = max(map(len, PROMPTS))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    with torch.no_grad():
        want = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW,
                           min_new_tokens=0, do_sample=False, pad_token_id=PAD)
    want = want[:, width:].tolist()

    got = Engine.load(folder).generate(PROMPTS, NEW, temperature=0)
    assert [r.ids for r in got] == want
    assert len({tuple(w) for w in want}) == 3, "distinct rows, or the test is vacuous"
