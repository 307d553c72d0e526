"""The demo model, SmolLM2-135M-Instruct from its GGUF (tests/real_models.py), exported with
`scredge export --from-gguf` (SCR on every layer at gamma 0) and run by the torch-free
runtime. Oracles: transformers' greedy generate on the model and tokenizer it loads from the
same GGUF (its own GGUF loader and chat template), through Engine.chat and through the
OpenAI client against `scredge serve`; and each prompt alone for a batch of unequal
prompts (SCR_SPEC section 3). Slow: the export takes minutes on two cores."""

from __future__ import annotations

import pytest
from real_models import hf_from_gguf, smollm2_gguf

from scredge.cli import main

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one short sentence."},
     {"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "Name three fruits."},
     {"role": "assistant", "content": "Apple, banana and cherry."},
     {"role": "user", "content": "And three vegetables?"}],
]
NEW = 40


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(artifact folder, transformers model, transformers tokenizer)."""
    gguf = smollm2_gguf()
    out = tmp_path_factory.mktemp("smollm2") / "smollm2"
    assert main(["export", "--from-gguf", str(gguf), "--out", str(out)]) == 0
    model, tok = hf_from_gguf(gguf)
    return out, model, tok


@pytest.fixture(scope="module")
def engine(smollm2):
    from scredge.runtime import Engine

    eng = Engine.load(smollm2[0], device="cpu")
    yield eng
    eng.close()


def hf_chat(model, tok, messages, new: int = NEW) -> list[int]:
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                  return_dict=False)
    ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new, do_sample=False,
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    got = out[0, len(ids):].tolist()
    return got[:-1] if got and got[-1] == tok.eos_token_id else got  # eos not returned


@pytest.mark.parametrize("k", range(len(CHATS)))
def test_chat_greedy_ids_equal_transformers(smollm2, engine, k):
    _, model, tok = smollm2
    assert engine.chat_ids(CHATS[k]) == list(tok.apply_chat_template(
        CHATS[k], add_generation_prompt=True, tokenize=True, return_dict=False))
    result = engine.chat(CHATS[k], max_new_tokens=NEW, temperature=0.0)
    assert result.ids == hf_chat(model, tok, CHATS[k])
    assert result.text == tok.decode(result.ids, skip_special_tokens=True)


def test_served_chat_equals_transformers(smollm2, engine):
    openai = pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    from scredge.serve import ServerConfig, ServerThread

    _, model, tok = smollm2
    with ServerThread(engine, ServerConfig("smollm2", max_batch=4)) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0,
                               timeout=300)
        for messages in CHATS[:2]:
            reply = client.chat.completions.create(model="smollm2", messages=messages,
                                                   max_tokens=NEW, temperature=0.0)
            want = tok.decode(hf_chat(model, tok, messages), skip_special_tokens=True)
            assert reply.choices[0].message.content == want


def test_batch_of_unequal_prompts_equals_each_alone(engine):
    prompts = ["The capital of France is", "Once upon a time, in a small village by the sea,",
               "def fibonacci(n):"]
    batch = engine.generate(prompts, max_new_tokens=24, temperature=0.0)
    alone = [engine.generate(p, max_new_tokens=24, temperature=0.0) for p in prompts]
    assert [r.ids for r in batch] == [r.ids for r in alone]


TEXTS = ["Hello, world! How are you today?", "naïve café, 東京, Ελληνικά and an emoji 🎉🙂",
         "  leading spaces\n\ttabs and\r\nnewlines  ", "def f(x):\n    return x ** 2  # square",
         "Don't stop: it's 3.14 , isn't it ? Yes ! ( ok )"]


def test_streamed_pieces_are_the_text_on_the_real_tokenizer(smollm2, engine):
    """One text path (issue #26) on SmolLM2's real tokenizer. Oracle: transformers' decode
    of the same ids; our stream's pieces, joined, must equal it and our own decode, for
    encoded texts (multi-byte characters split across tokens) and for random ids."""
    import numpy as np

    _, _, tok = smollm2
    rng = np.random.default_rng(0)
    seqs = [tok.encode(t, add_special_tokens=False) for t in TEXTS]
    # random ids among the ordinary tokens: special ones are kept by our decode and skipped by
    # transformers' (skip_special_tokens=True), a policy apart from the text path
    ordinary = np.setdiff1d(np.arange(len(tok)), list(tok.added_tokens_decoder))
    seqs += [rng.choice(ordinary, 48).tolist() for _ in range(30)]
    for ids in seqs:
        stream = engine.tokenizer.stream_decoder()
        pieces = "".join(stream.push(int(i)) for i in ids) + stream.flush()
        want = tok.decode(ids, skip_special_tokens=True)
        assert engine.tokenizer.decode(ids) == want
        assert pieces == want


@pytest.mark.parametrize("k", range(2))
def test_a_chat_result_is_its_streamed_pieces(engine, k):
    """Oracle: the same engine's non-streamed result for the same greedy chat."""
    streamed = "".join(engine.chat_stream(CHATS[k], max_new_tokens=NEW, temperature=0.0))
    assert streamed == engine.chat(CHATS[k], max_new_tokens=NEW, temperature=0.0).text
