"""Bring-your-own-checkpoint, end to end: small random Llama, Llama-3-rope-scaled, Mistral
(sliding window) and Qwen2 models saved by transformers with a BPE tokenizer trained here,
exported with `scredge export --from-llama`, generated from with `scredge generate`.
Oracle: transformers' own greedy `generate` (and decode, and apply_chat_template) on the
same folder, token for token."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from scredge.artifact import sha256_file
from scredge.cli import main
from scredge.contract import TOKENIZER_KEY

transformers = pytest.importorskip("transformers", reason="transformers (dev extra) not installed")
hf_models = pytest.importorskip("hf_models")

PROMPT = "The function returns a generator object"
NEW = 20


@pytest.fixture(scope="module")
def families(tmp_path_factory, bpe_tokenizer, hf_tokenizer_dir):
    """variant -> (transformers model, HF folder, artifact folder). The llama model's
    generation_config stops on the token it emits 7th, so stopping at eos is exercised."""
    _, hf_tok = hf_tokenizer_dir
    vocab = bpe_tokenizer.get_vocab_size()
    eos = bpe_tokenizer.token_to_id(hf_models.EOS)
    prompt_ids = hf_tok(PROMPT)["input_ids"]
    root = tmp_path_factory.mktemp("families")
    out = {}
    for variant in hf_models.VARIANTS:
        model = hf_models.build_model(variant, vocab, seed=1, eos_ids=[eos])
        if variant == "llama":
            free = hf_models.hf_greedy(model, prompt_ids, NEW)
            stop = next(t for i, t in enumerate(free) if i >= 6 and t not in free[:i])
            model.generation_config.eos_token_id = [eos, stop]
        folder = root / f"{variant}-hf"
        model.save_pretrained(folder)
        hf_models.save_tokenizer(folder, bpe_tokenizer)
        art = root / variant
        assert main(["export", "--from-llama", str(folder), "--out", str(art)]) == 0
        out[variant] = (model, folder, art)
    return out


def scredge_generate(capsys, art, *args):
    capsys.readouterr()
    assert main(["generate", str(art), "--greedy", "--json", "--max-new-tokens", str(NEW),
                 *args]) == 0
    return json.loads(capsys.readouterr().out)


def expected(model, ids):
    """transformers' greedy ids without the eos it stopped on, and the finish reason."""
    got = hf_models.hf_greedy(model, ids, NEW)
    eos = set(model.generation_config.eos_token_id)
    if got and got[-1] in eos:
        return got[:-1], "stop"
    return got, "length"


@pytest.mark.parametrize("variant", list(hf_models.VARIANTS))
def test_exported_logits_equal_transformers(families, variant):
    """The artifact's onnxruntime graph (SCR retrofitted at gamma = 0) gives transformers'
    logits, past the Mistral window and the llama3 low-frequency band."""
    import numpy as np
    import torch

    from scredge.runtime import Engine

    model, _, art = families[variant]
    ids = np.random.default_rng(5).integers(0, model.config.vocab_size, (1, 40))
    pos = np.arange(40)[None]
    logits = Engine.load(art, backend="ort").runner.decoder(1).step(ids, pos)
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()
    np.testing.assert_allclose(logits, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", list(hf_models.VARIANTS))
def test_generate_equals_transformers(families, hf_tokenizer_dir, capsys, variant):
    model, _, art = families[variant]
    hf_tok = hf_tokenizer_dir[1]
    result = scredge_generate(capsys, art, "--prompt", PROMPT)
    ids, reason = expected(model, hf_tok(PROMPT)["input_ids"])
    assert result["ids"] == ids and result["finish_reason"] == reason
    assert result["text"] == hf_tok.decode(result["ids"])
    assert result["prompt_tokens"] == len(hf_tok(PROMPT)["input_ids"])
    if variant == "llama":  # its eos is the 7th token: stopped there, eos excluded
        assert reason == "stop" and len(ids) == 6
        free = scredge_generate(capsys, art, "--prompt", PROMPT, "--ignore-eos")
        assert len(free["ids"]) == NEW and free["ids"][:6] == ids


def hf_chat_ids(hf_tok, messages) -> list[int]:
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(getattr(ids, "input_ids", ids))  # a BatchEncoding in transformers 5


def test_chat_equals_transformers(families, hf_tokenizer_dir, capsys, tmp_path):
    """--messages and --chat render the template as apply_chat_template does."""
    model, _, art = families["qwen2"]
    hf_tok = hf_tokenizer_dir[1]
    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "What is a list?"}]
    path = tmp_path / "messages.json"
    path.write_text(json.dumps(messages))
    ids = hf_chat_ids(hf_tok, messages)
    result = scredge_generate(capsys, art, "--messages", str(path))
    assert result["ids"] == expected(model, ids)[0] and result["prompt_tokens"] == len(ids)
    ids = hf_chat_ids(hf_tok, [{"role": "user", "content": "What is a list?"}])
    result = scredge_generate(capsys, art, "--chat", "--prompt", "What is a list?")
    assert result["ids"] == expected(model, ids)[0] and result["prompt_tokens"] == len(ids)


def test_stream_and_engine_chat(families):
    from scredge.runtime import Engine

    engine = Engine.load(families["mistral"][2])
    whole = engine.generate(PROMPT, NEW, temperature=0)
    pieces = list(engine.stream(PROMPT, NEW, temperature=0))
    assert "".join(pieces) == whole.text and not any("\ufffd" in p for p in pieces[:-1])
    messages = [{"role": "user", "content": "hi"}]
    assert engine.chat(messages, NEW, temperature=0).ids == engine.generate(
        engine.chat_ids(messages), NEW, temperature=0).ids


def test_artifact_lists_the_tokenizer_files(families):
    _, folder, art = families["llama"]
    manifest = json.loads((art / "manifest.json").read_text())["files"]
    config = json.loads((art / "config.json").read_text())
    files = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
             "generation_config.json"]
    assert sorted(config[TOKENIZER_KEY]["files"]) == sorted(files)
    for name in files:
        assert manifest[name]["sha256"] == sha256_file(folder / name)
    assert config[TOKENIZER_KEY]["eos_token_ids"] == json.loads(
        (folder / "generation_config.json").read_text())["eos_token_id"]
    assert config["export"]["source"]["kind"] == "huggingface"


NO_TORCH = """
import sys, json
sys.modules["torch"] = None
sys.modules["transformers"] = None
from scredge.runtime import Engine
r = Engine.load(sys.argv[1]).generate(sys.argv[2], 12, temperature=0)
print(json.dumps([r.ids, r.text]))
"""


def test_tokenizer_runtime_needs_neither_torch_nor_transformers(families):
    from scredge.runtime import Engine

    art = families["qwen2"][2]
    run = subprocess.run([sys.executable, "-c", NO_TORCH, str(art), PROMPT],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    r = Engine.load(art).generate(PROMPT, 12, temperature=0)
    assert json.loads(run.stdout) == [r.ids, r.text]


BATCH = ["The function returns a generator object", "Hello",
         "A list of values is sorted in place by the method of the class"]


@pytest.mark.parametrize("variant", list(hf_models.VARIANTS))
def test_batch_of_unequal_prompts_equals_transformers_left_padded(families, hf_tokenizer_dir,
                                                                 variant):
    """Three text prompts of different token lengths in one `Engine.generate` call (joined
    through attention_mask) against transformers' left-padded batched greedy `generate` on
    the same folder: every row's ids, up to (excluding) the eos transformers stopped on."""
    import torch

    from scredge.runtime import Engine

    model, _, art = families[variant]
    hf_tok = hf_tokenizer_dir[1]
    rows = [hf_tok(p)["input_ids"] for p in BATCH]
    assert len({len(r) for r in rows}) == 3, "the prompts must differ in length"
    width = max(map(len, rows))
    pad = 0  # masked out: its value must not matter
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW,
                             min_new_tokens=0, do_sample=False, pad_token_id=pad)
    eos = set(model.generation_config.eos_token_id)
    want = []
    for row in out[:, width:].tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        want.append(row[:cut])
    assert sum(map(len, want)) >= NEW, "rows that stop at once would make this vacuous"
    got = Engine.load(art, backend="ort").generate(BATCH, NEW, temperature=0)
    assert [r.ids for r in got] == want
