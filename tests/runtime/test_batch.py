"""The batching core (runtime/batch.py): rows with their own parameters, seeds, stops and
budgets in one batch; admit mid-run, retire mid-batch; the logits-processor hook; and one
text path (a result's text is its streamed pieces). Oracles: each request generated alone
(`Engine.generate`, a batch of one) and the reference loop `scr_ref.generate`; Python's
str.find on a scripted byte stream; transformers' own decode for the clean-up tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scripted_runner import ScriptedRunner

from scredge.errors import ScredgeError
from scredge.ref import generate as ref_generate
from scredge.runtime import Engine
from scredge.runtime.batch import Batch, Request
from scredge.sampling import GREEDY, SamplingParams

PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15, 16, 17], list(range(30, 52)), [77]]
MIXED = [GREEDY, SamplingParams(0.9, 40, 0.95, 1.2), SamplingParams(0.7, 0, 0.8),
         SamplingParams(0.0, repetition_penalty=1.3)]


@pytest.fixture(scope="module")
def engine(small_window_artifact):
    return Engine.load(small_window_artifact[1])


def _alone(engine, prompt, params, seed, n, **kw):
    return engine.generate(prompt, n, temperature=params.temperature, top_k=params.top_k,
                           top_p=params.top_p, repetition_penalty=params.repetition_penalty,
                           seed=seed, **kw)


def _drive(batch: Batch, events=None) -> dict[int, list]:
    """Run the batch to the end; each row's events (by its tag)."""
    got: dict[int, list] = {}
    while True:
        for ev in events or ():
            got.setdefault(ev.tag, []).append(ev)
        batch.retire()
        if not batch.rows:
            return got
        events = batch.step()


def test_mixed_parameters_in_one_batch_each_equal_alone(engine, small_window_artifact):
    """Greedy, nucleus + top-k + penalty, plain sampling and greedy + penalty rows with
    their own seeds and budgets, past W = 16, in one batch: each row's ids, finish and
    usage equal its request alone; the greedy row also equals the reference loop."""
    batch = engine.batch()
    requests = [Request(p, sp, seed=10 + i, max_tokens=20 + 5 * i, tag=i)
                for i, (p, sp) in enumerate(zip(PROMPTS, MIXED))]
    got = _drive(batch, batch.admit(requests))
    for i, (p, sp) in enumerate(zip(PROMPTS, MIXED)):
        alone = _alone(engine, p, sp, 10 + i, 20 + 5 * i)
        events = got[i]
        assert sum(ev.accepted for ev in events) == 20 + 5 * i == events[-1].row.generated
        assert events[-1].row.ids == alone.ids and events[-1].finish_reason == "length"
        assert [ev.finished for ev in events] == [False] * (len(events) - 1) + [True]
    model = small_window_artifact[0]
    assert got[0][-1].row.ids == ref_generate(model, [PROMPTS[0]], 20)[0]
    assert len({tuple(got[i][-1].row.ids) for i in got}) == 4, "distinct rows"


def test_seeded_rows_do_not_depend_on_their_companions(engine):
    """The same sampled request in two batches with different companions (and alone)
    draws the same tokens: each row has its own random stream."""
    req = dict(prompt=PROMPTS[1], params=MIXED[1], seed=5, max_tokens=30)
    outs = []
    for companions in ([], [PROMPTS[0]], [PROMPTS[2], PROMPTS[3], PROMPTS[0]]):
        batch = engine.batch()
        reqs = [Request(tag="me", **req)] + [Request(p, MIXED[2], seed=None, max_tokens=30,
                                                     tag=k) for k, p in enumerate(companions)]
        outs.append(_drive(batch, batch.admit(reqs))["me"][-1].row.ids)
    assert outs[0] == outs[1] == outs[2]


def test_admit_into_a_running_batch_and_retire_mid_batch(engine):
    """A request joins after 5 steps with its own parameters; a row is retired mid-run
    (never decoded again: the decoder holds one row fewer); the others equal alone."""
    batch = engine.batch()
    batch.admit([Request(PROMPTS[2], MIXED[1], 7, 40, tag="long"),
                 Request(PROMPTS[0], GREEDY, 0, 40, tag="dropped")])
    for _ in range(5):
        batch.step()
    batch.admit([Request(PROMPTS[1], MIXED[2], 8, 25, tag="late")])
    assert [r.tag for r in batch.rows] == ["long", "dropped", "late"]
    # rows of unequal length (concat-form view: the shorter ones left-padded, mask 0)
    assert batch.decoder.batch == 3 and not batch.decoder.host_state().mask.all()
    for _ in range(3):
        batch.step()
    batch.retire([batch.rows[1]])
    assert batch.decoder.batch == 2 and [r.tag for r in batch.rows] == ["long", "late"]
    rows = {r.tag: r for r in batch.rows}
    _drive(batch)
    assert batch.decoder is None  # handed back when the last row left
    assert rows["long"].ids == _alone(engine, PROMPTS[2], MIXED[1], 7, 40).ids
    assert rows["late"].ids == _alone(engine, PROMPTS[1], MIXED[2], 8, 25).ids


def test_stop_id_max_tokens_zero_and_a_refused_admit(engine):
    """A stop id ends its row (the id is counted, not output); max_tokens 0 finishes at
    admit without a token; a request with an id outside the vocabulary is refused before
    any model call and the running batch is as it was."""
    first = engine.generate(PROMPTS[0], 10, temperature=0).ids
    stop = first[4]
    batch = engine.batch()
    events = batch.admit([Request(PROMPTS[0], stop_ids=[stop], max_tokens=30, tag="s"),
                          Request(PROMPTS[1], max_tokens=0, tag="z")])
    assert [(ev.tag, ev.finish_reason, ev.accepted) for ev in events][0] == ("z", "length", 0)
    rows = list(batch.rows)
    with pytest.raises(ScredgeError, match="outside the vocabulary"):
        batch.admit([Request([1, 10**6])])
    assert batch.rows == rows
    got = _drive(batch, events)
    assert got["s"][-1].finish_reason == "stop" and rows[0].ids == first[:first.index(stop)]
    assert rows[0].generated == first.index(stop) + 1
    assert rows[1].ids == [] and rows[1].generated == 0


class CutAfter:
    """A request's `cancelled`: False for the first `n` questions, True from then on."""

    def __init__(self, n: int) -> None:
        self.n, self.asked = n, 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.asked > self.n


def test_a_prefill_is_cut_between_chunks_and_the_others_go_on(engine):
    """Oracle: each request generated alone, and the chunk count (a 40-token prompt in
    chunks of 8 is 5 calls). Into a running batch come three prompts: one (in a group with
    a companion of its length) cut after 2 chunks, one alone cut before its first: both
    end 'cancelled' and never join; the companion, the running row and a later request
    equal each alone; a batch whose every new row is cut stays as it was."""
    long = list(range(40, 80))
    batch = Batch(engine.runner, engine.tokenizer, prefill_chunk=8)
    batch.admit([Request(PROMPTS[2], max_tokens=30, tag="running")])
    batch.step()
    cut, gone = CutAfter(2), CutAfter(0)
    events = batch.admit([Request(long, max_tokens=30, tag="cut", cancelled=cut),
                          Request(long[::-1], max_tokens=30, tag="companion",
                                  cancelled=CutAfter(99)),
                          Request(PROMPTS[1], max_tokens=30, tag="gone", cancelled=gone)])
    assert {ev.tag: ev.finish_reason for ev in events if ev.finished} == {
        "cut": "cancelled", "gone": "cancelled"}
    assert cut.asked == 3 and gone.asked == 1  # cut before its 3rd chunk, before its 1st
    assert batch.prefill_chunks == 3 + 5  # the running 22-token prompt in 3, the companion in 5
    assert [r.tag for r in batch.rows] == ["running", "companion"]
    assert batch.admit([Request(long, tag="x", cancelled=CutAfter(1))])[0].finish_reason \
        == "cancelled"
    assert [r.tag for r in batch.rows] == ["running", "companion"]
    rows = list(batch.rows)
    _drive(batch)
    assert rows[0].ids == engine.generate(PROMPTS[2], 30, temperature=0).ids
    assert rows[1].ids == engine.generate(long[::-1], 30, temperature=0).ids


class ForceProcessor:
    """A logits processor that allows only `allowed` (as a grammar's mask would)."""

    def __init__(self, allowed: list[int]) -> None:
        self.allowed = allowed
        self.accepted: list[int] = []

    def __call__(self, logits):
        mask = np.full_like(logits, -np.inf)
        mask[self.allowed] = 0
        return logits + mask

    def accept(self, token: int) -> None:
        self.accepted.append(token)


def test_logits_processor_hook(engine):
    """A row with a processor samples only tokens it allows and is told each one it
    takes; the greedy row beside it is untouched (equal to alone)."""
    proc = ForceProcessor([65, 66, 67])
    batch = engine.batch()
    batch.admit([Request(PROMPTS[0], SamplingParams(1.0), 3, 12, logits_processor=proc,
                         tag="p"), Request(PROMPTS[1], GREEDY, 0, 12, tag="g")])
    rows = {r.tag: r for r in batch.rows}
    _drive(batch)
    assert rows["p"].ids == proc.accepted and set(proc.accepted) <= {65, 66, 67}
    assert len(proc.accepted) == 12
    assert rows["g"].ids == engine.generate(PROMPTS[1], 12, temperature=0).ids


# ---- text: stops across pieces, and one text path ----------------------------------------
def test_stop_strings_across_pieces_and_ids():
    """A stop string arriving over several tokens (and inside a multi-byte character's
    neighbourhood) cuts the text before it; the pieces never show its start early and add
    up to the text. Oracle: str.find on the scripted text."""
    text = "abc ✓ EN-ENDING tail"
    engine = Engine(ScriptedRunner(list(text.encode())))
    batch = engine.batch()
    events = batch.admit(engine.requests("x", 100, temperature=0, stop=["END", "zz"],
                                         tag=0))
    row = batch.rows[0]
    pieces = [ev.text for ev in _drive(batch, events)[0]]
    assert row.text == text[:text.find("END")] == "".join(pieces)
    assert row.finish_reason == "stop" and bytes(row.ids) == text[:text.find("END")].encode()
    assert "EN" not in "".join(pieces[:text.find("EN-") + 3])  # held while it could be END


def _wordpiece(folder):
    """A WordPiece tokenizer.json (tokenizers library) and a tokenizer_config.json asking
    for the clean-up of tokenization spaces, saved by transformers."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = ["[UNK]", "[PAD]", "hello", "world", ".", "it", "isn", "'", "t", "?", "do",
             "##es", "n't", ",", "!", "s", "we", "re", "m", "ve", "a", "##b"]
    tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(
        {w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    tok.decoder = tokenizers.decoders.WordPiece(cleanup=False)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                                pad_token="[PAD]",
                                                clean_up_tokenization_spaces=True)
    fast.save_pretrained(folder)
    return vocab, fast


def test_result_text_is_the_streamed_text_with_clean_up(tmp_path):
    """A tokenizer whose decode cleans up tokenization spaces (" ." -> ".", " ' " -> "'",
    ...): generate()'s text equals the concatenation of stream()'s pieces, and both equal
    transformers' decode of the ids, also when a stop string cuts the text."""
    from scredge.runtime.hf_tokenizer import HFTokenizer

    vocab, fast = _wordpiece(tmp_path)
    words = "hello world . it isn ' t ? do ##es n't , we ' re ! a ##b ' s . it ' m , we ' ve ."
    script = [vocab.index(w) for w in words.split()]
    import tokenizers

    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["clean_up_tokenization_spaces"] is True
    hf = HFTokenizer(tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json")), config,
                     None, (), {})
    engine = Engine(ScriptedRunner(script, len(vocab)))
    engine.tokenizer = hf
    n = len(script)  # the prefill's logits give script[0], each decode call the next
    result = engine.generate([0], n, temperature=0)
    pieces = list(engine.stream([0], n, temperature=0))
    assert result.ids == script
    want = fast.decode(result.ids)
    assert "isn't" in want and "world." in want and " ." not in want  # the clean-up ran
    assert result.text == "".join(pieces) == want == hf.decode(result.ids)
    assert len(pieces) > 3  # really streamed, not one piece at the end
    stopped = engine.generate([0], n, temperature=0, stop=["we're"])
    assert stopped.text == want[:want.find("we're")] == "".join(
        engine.stream([0], n, temperature=0, stop=["we're"]))
