"""Shared fixtures: tiny configs and fixed seeds. Every test names its oracle."""

from __future__ import annotations

import pytest

from scredge.config import SCRConfig

# Smaller than the `tiny` preset so the whole suite stays fast on two cores.
MICRO = SCRConfig(
    vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
    window=8, scr_layers=(0, 1),
)


@pytest.fixture
def micro() -> SCRConfig:
    return MICRO


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """A byte-level BPE (vocab 2048) trained once per session on our prose corpus."""
    pytest.importorskip("tokenizers", reason="tokenizers (ort extra) not installed")
    from hf_models import train_bpe

    return train_bpe()


@pytest.fixture(scope="session")
def hf_tokenizer_dir(bpe_tokenizer, tmp_path_factory):
    """(folder, transformers tokenizer): the BPE saved by transformers with its chat template."""
    pytest.importorskip("transformers", reason="transformers (dev extra) not installed")
    from hf_models import save_tokenizer

    folder = tmp_path_factory.mktemp("hf_tokenizer")
    save_tokenizer(folder, bpe_tokenizer)
    import transformers

    return folder, transformers.AutoTokenizer.from_pretrained(folder)
