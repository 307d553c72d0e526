"""Speculative decoding's parts (runtime/speculative.py). Oracles: the target distribution
itself (the acceptance rule's output is distributed as p, by a chi-square test over seeded
draws), plain step-by-step decoding (after a verify call and its rollback, the next logits
equal those of feeding the accepted tokens one at a time), and the definition of prompt
lookup (the tokens after the latest earlier occurrence of the last n tokens)."""

from __future__ import annotations

import numpy as np
import pytest

from scredge.config import SCRConfig
from scredge.errors import ScredgeError
from scredge.runtime.decoding import positions
from scredge.runtime.speculative import (
    NgramProposer,
    SpeculativeSpec,
    accept_token,
    rollback,
    verify_row,
)
from scredge.sampling import GREEDY, RowSampler, SamplingParams

NO_SCR_WINDOWED = SCRConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                            d_ff=64, window=16, scr_layers=())


# ---- acceptance ------------------------------------------------------------------------
def _chi_square_p(counts: np.ndarray, probs: np.ndarray) -> float:
    from math import erf, sqrt

    n = counts.sum()
    keep = probs > 0
    expected = probs[keep] * n
    stat = float(((counts[keep] - expected) ** 2 / expected).sum())
    dof = int(keep.sum()) - 1
    # Wilson-Hilferty: chi2(dof) -> approximately normal
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / sqrt(2 / (9 * dof))
    return 0.5 * (1 - erf(z / sqrt(2)))


@pytest.mark.parametrize("point_mass", [False, True], ids=["draft-q", "ngram"])
def test_acceptance_keeps_the_target_distribution(point_mass):
    """Oracle: p itself. A draft token drawn from q (or fixed, for an n-gram proposal) and
    passed through accept_token is distributed as p: chi-square over 40 000 seeded draws
    (p-value > 1e-3), total variation < 0.02; a biased rule (always accept) fails the same
    test, so the test has power."""
    rng = np.random.default_rng(7)
    V = 8
    p = rng.dirichlet(np.ones(V))
    q = rng.dirichlet(np.ones(V))
    fixed = int(np.argmin(p))  # an unlikely proposal: most are rejected
    n = 40_000
    counts = np.zeros(V)
    biased = np.zeros(V)
    accepted = 0
    for _ in range(n):
        d = fixed if point_mass else int(rng.choice(V, p=q))
        ok, token = accept_token(p, None if point_mass else q, d, rng.random(), rng.random())
        counts[token] += 1
        biased[d] += 1
        accepted += ok
    assert _chi_square_p(counts, p) > 1e-3
    assert 0.5 * np.abs(counts / n - p).sum() < 0.02
    assert _chi_square_p(biased, p) < 1e-6, "the test must reject a wrong rule"
    expected = p[fixed] if point_mass else np.minimum(p, q).sum()  # the acceptance rate
    assert abs(accepted / n - expected) < 0.02


def test_verify_row_greedy_is_argmax():
    """Oracle: argmax per position. Drafts are accepted while they equal the argmax; the
    row then takes the argmax at the first mismatch (or the bonus after all k)."""
    logits = np.full((4, 10), -1.0, dtype=np.float32)
    for i, t in enumerate([3, 5, 7, 9]):
        logits[i, t] = 2.0
    sampler = RowSampler(GREEDY, [0])
    assert verify_row(logits, [3, 5, 7], None, sampler, None) == [3, 5, 7, 9]
    assert verify_row(logits, [3, 4, 7], None, sampler, None) == [3, 5]
    assert verify_row(logits, [1, 5, 7], None, sampler, None) == [3]
    assert verify_row(logits[:1], [], None, sampler, None) == [3]


# ---- n-gram proposals ------------------------------------------------------------------
def test_ngram_proposes_the_latest_continuation():
    """Oracle: the definition. History 1 2 3 9 9 1 2 3 4 5 1 2 3: the trigram 1 2 3 last
    occurred before '4 5', so k=3 proposes 4 5 1; with nothing recurring, nothing."""
    ng = NgramProposer([1, 2, 3, 9, 9, 1, 2, 3, 4, 5, 1, 2, 3], max_n=3)
    assert ng.propose(3)[0] == [4, 5, 1]
    ng.push([7])
    assert ng.propose(3)[0] == []  # 3 7 / 7 never occurred before
    ng2 = NgramProposer([4, 4], max_n=2)
    assert ng2.propose(5)[0] == [4]  # unigram 4 -> the token after its first occurrence


def test_spec_refuses_bad_settings():
    """Oracle: the documented ranges."""
    for bad in (dict(method="medusa"), dict(method="ngram", k=0),
                dict(method="ngram", k=99), dict(method="draft")):
        with pytest.raises(ScredgeError):
            SpeculativeSpec(**bad)


# ---- rollback against plain decoding ---------------------------------------------------
@pytest.fixture(scope="module")
def no_scr_artifact(tmp_path_factory):
    """No SCR layer, W = 16: the rollback cuts the cache instead of re-running."""
    from scredge.export.pipeline import export_artifact
    from scredge.ref import build_model

    out = tmp_path_factory.mktemp("spec") / "noscr16"
    export_artifact(build_model(NO_SCR_WINDOWED, seed=2, std=0.08), out)
    return out


def _plain_logits(runner, ids: list[int]) -> np.ndarray:
    dec = runner.decoder(1)
    logits = None
    for i, t in enumerate(ids):
        logits = dec.step(np.array([[t]]), positions(i, 1, 1))[:, -1]
    dec.release()
    return logits[0]


@pytest.mark.parametrize("which", ["tiny", "w16-scr", "noscr-w16"])
def test_rollback_equals_plain_decoding(which, tiny_artifact, small_window_artifact,
                                        no_scr_artifact):
    """Oracle: plain decoding, one token a call. Two rows at different lengths (a joined
    batch, pads in the cache) verify T = 5 tokens; row 0 keeps 2, row 1 keeps 5 (every
    one); the next call's logits equal feeding each row's kept tokens one by one. Run far
    past the window for the windowed models (SCR: re-run from the kept state; no SCR: the
    cache cut)."""
    from scredge.runtime import Engine
    from scredge.runtime.decoding import prefill_rows

    folder = {"tiny": tiny_artifact[1], "w16-scr": small_window_artifact[1],
              "noscr-w16": no_scr_artifact}[which]
    runner = Engine.load(folder).runner
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 256, 23).tolist(), rng.integers(0, 256, 9).tolist()]
    dec, _ = prefill_rows(runner, [np.array(p) for p in prompts])
    start = np.array([len(p) for p in prompts])
    history = [list(p) for p in prompts]
    for _ in range(3):  # three verify rounds, so the second and third start from a rollback
        fed = rng.integers(0, 256, (2, 5))
        before = dec.snapshot()
        dec.step(fed, positions(start, 2, 5))
        keep = [2, 5]
        rollback(dec, before, fed, keep, start)
        for b in range(2):
            history[b] += fed[b, :keep[b]].tolist()
        start = start + np.array(keep)
    nxt = np.array([[11], [12]])
    got = dec.step(nxt, positions(start, 2, 1))[:, -1]
    for b in range(2):
        want = _plain_logits(runner, history[b] + [int(nxt[b, 0])])
        np.testing.assert_allclose(got[b], want, rtol=1e-4, atol=1e-4)
    dec.release()


def test_ngram_sampled_verify_is_reproducible():
    """Oracle: the seed. The same row seed gives the same tokens through verify_row."""
    logits = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
    params = SamplingParams(temperature=0.8)
    a = verify_row(logits, [1, 2], None, RowSampler(params, [5]), None)
    b = verify_row(logits, [1, 2], None, RowSampler(params, [5]), None)
    assert a == b and 1 <= len(a) <= 3


# ---- through the batching core and the Engine -------------------------------------------
REPEAT = list(range(40, 52)) * 3  # a prompt that recurs: prompt lookup has proposals


@pytest.mark.parametrize("which", ["tiny", "w16-scr", "noscr-w16"])
def test_engine_greedy_equals_plain(which, tiny_artifact, small_window_artifact,
                                    no_scr_artifact):
    """Oracle: plain greedy decoding, token for token. A batch of three prompts of unequal
    length (rows accept different counts each step), 48 tokens each (far past W = 16 for
    the windowed models), with n-gram lookup at k = 2 and 5, and with the model as its own
    draft (then every draft is accepted: a check of the draft's own rollback)."""
    from scredge.runtime import Engine

    folder = {"tiny": tiny_artifact[1], "w16-scr": small_window_artifact[1],
              "noscr-w16": no_scr_artifact}[which]
    engine = Engine.load(folder)
    prompts = [REPEAT, [7, 8, 9] + REPEAT[:20], [5, 6, 7, 5, 6, 7, 5]]
    plain = [r.ids for r in engine.generate(prompts, 48, temperature=0)]
    for k in (2, 5):
        got = engine.generate(prompts, 48, temperature=0, speculative="ngram", speculative_k=k)
        assert [r.ids for r in got] == plain
        assert sum(r.timing["speculative"]["accepted"] for r in got) > 0, "vacuous"
    got = engine.generate(prompts[:2], 48, temperature=0, speculative=engine, speculative_k=3)
    assert [r.ids for r in got] == plain[:2]
    stats = got[0].timing["speculative"]
    assert stats["accepted"] == stats["proposed"] > 0


def test_engine_sampled_is_reproducible_and_per_row(small_window_artifact):
    """Oracle: the seed, and each prompt alone. Sampled speculative rows (temperature 0.9,
    top-k 40, repetition penalty 1.2) give the same tokens for the same seed, in a batch
    or alone."""
    from scredge.runtime import Engine

    engine = Engine.load(small_window_artifact[1])
    prompts = [REPEAT, [3, 4, 5, 3, 4, 5, 3, 4]]
    kw = dict(temperature=0.9, top_k=40, repetition_penalty=1.2, seed=5, speculative="ngram")
    batch = [r.ids for r in engine.generate(prompts, 40, **kw)]
    alone = [engine.generate(p, 40, **kw).ids for p in prompts]
    assert batch == alone and all(len(ids) == 40 for ids in batch)


def test_engine_refuses_bad_speculation(tiny_artifact, bpe_tokenizer):
    """Oracle: the documented refusals, each a ScredgeError naming what differs: an unknown
    method, a k outside 1..MAX_K, a draft of another vocabulary (through Engine.generate),
    a draft whose tokenizer.json differs at the same vocabulary size (a BPE trained on less
    text)."""
    from hf_models import train_bpe

    from scredge.runtime import Engine
    from scredge.runtime.hf_tokenizer import HFTokenizer
    from scredge.runtime.speculative import check_draft

    engine = Engine.load(tiny_artifact[1])
    with pytest.raises(ScredgeError, match="speculative"):
        engine.generate([1, 2, 3], 4, speculative="medusa")
    for k in (0, -3, 10**9, True):  # refused even where nothing speculates (was ignored)
        with pytest.raises(ScredgeError, match="invalid speculative k"):
            engine.generate([1, 2, 3], 4, speculative_k=k)
    other = Engine(engine.runner)
    other.config = engine.config.with_(vocab_size=300)
    with pytest.raises(ScredgeError, match="another vocabulary"):
        engine.generate([1, 2, 3], 4, speculative=other)
    cfg = engine.config.with_(vocab_size=2048)
    a = HFTokenizer(bpe_tokenizer, {}, None, (2,), {})
    b = HFTokenizer(train_bpe(corpus_bytes=40_000), {}, None, (2,), {})
    check_draft(cfg, a, cfg, HFTokenizer(bpe_tokenizer, {}, None, (2,), {}), "same")
    with pytest.raises(ScredgeError, match="another tokenizer"):
        check_draft(cfg, a, cfg, b, "draft")
