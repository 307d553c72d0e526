"""Batches of prompts of unequal length (SCR_SPEC section 3, v2 `attention_mask`). Oracle:
each prompt generated alone with the same seed (greedy and sampled ids identical), and
`scr_ref`'s own loop, which joins rows with `ModelState.join`."""

from __future__ import annotations

import numpy as np
import pytest

from scredge.ref import generate as ref_generate
from scredge.runtime import Engine
from scredge.sampling import SamplingParams

# 3 and 9 are shorter than W-1 = 15; 22 is longer: its cache is full (P = 15) at the join
PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15, 16, 17], list(range(30, 52))]
SAMPLED = dict(temperature=0.9, top_k=40, top_p=0.95, repetition_penalty=1.2)


@pytest.fixture(scope="module")
def engine(small_window_artifact):
    """The default export: the shared KV-cache form (rows of their own lengths, no pads)."""
    return Engine.load(small_window_artifact[1])


@pytest.fixture(scope="module", params=["shared", "concat"])
def any_engine(request, small_window_artifact):
    """Both forms of the same weights (the concat one left-pads joined rows, mask 0)."""
    if request.param == "shared":
        return Engine.load(small_window_artifact[1])
    return Engine.load(request.getfixturevalue("small_window_concat")[1])


def _has_pads(decoder) -> bool:
    """Rows of unequal length, seen through the concat-form state (mask 0 = pad)."""
    return not decoder.host_state().mask.all()


class StepSpy:
    """Records the batch size of every decoder step the runner's decoders make."""

    def __init__(self, runner) -> None:
        self.batches: list[int] = []
        make = runner.decoder

        def decoder(batch):
            dec = make(batch)
            step = dec.step

            def spied(ids, positions):
                self.batches.append(ids.shape[0])
                return step(ids, positions)

            dec.step = spied
            return dec

        runner.decoder = decoder


@pytest.mark.parametrize("params", [dict(temperature=0), SAMPLED], ids=["greedy", "sampled"])
def test_mixed_lengths_equal_each_prompt_alone(engine, small_window_artifact, params):
    """40 tokens each, far past W = 16; sampled rows each seeded with seed 3."""
    batch = engine.generate(PROMPTS, 40, seed=3, **params)
    alone = [engine.generate(p, 40, seed=3, **params) for p in PROMPTS]
    assert [r.ids for r in batch] == [r.ids for r in alone]
    assert [r.prompt_tokens for r in batch] == [3, 9, 22]
    model = small_window_artifact[0]
    sp = SamplingParams(**{"temperature": 1.0, **params})
    assert [r.ids for r in batch] == ref_generate(model, PROMPTS, 40, sp, seed=3)
    assert len({tuple(r.ids) for r in batch}) == 3, "distinct rows, or the test is vacuous"


def test_seeds_one_per_row(engine):
    """Oracle: each prompt alone with its own seed; equal prompts with different seeds
    differ, so the seeds really reach their rows."""
    batch = engine.generate([PROMPTS[0], PROMPTS[0], PROMPTS[2]], 30, seed=[1, 2, 3], **SAMPLED)
    alone = [engine.generate(p, 30, seed=s, **SAMPLED).ids
             for p, s in ((PROMPTS[0], 1), (PROMPTS[0], 2), (PROMPTS[2], 3))]
    assert [r.ids for r in batch] == alone
    assert batch[0].ids != batch[1].ids


def test_a_finished_row_leaves_the_batch(small_window_artifact):
    """Row 0 stops at its own 4th greedy token; its slot is never decoded again (the spy
    sees batch 2 from then on) and every row still equals its prompt alone."""
    engine = Engine.load(small_window_artifact[1])
    first = engine.generate(PROMPTS[0], 10, temperature=0).ids
    stop = first[3]
    alone = [engine.generate(p, 20, temperature=0, stop=[stop]) for p in PROMPTS]
    assert alone[0].finish_reason == "stop" and alone[0].ids == first[:first.index(stop)]
    spy = StepSpy(engine.runner)
    batch = engine.generate(PROMPTS, 20, temperature=0, stop=[stop])
    assert [(r.ids, r.finish_reason) for r in batch] == [(r.ids, r.finish_reason)
                                                          for r in alone]
    decode = [b for b in spy.batches if b > 0]
    n_live = 3 - sum(r.finish_reason == "stop" for r in alone)
    assert decode[-1] == n_live < 3  # the last steps ran without the finished rows
    assert 3 in decode  # and before that the joined batch of three ran


@pytest.mark.parametrize("newcomer_params", [SAMPLED, dict(temperature=0.7, top_p=0.8)],
                         ids=["same-params", "own-params"])
def test_join_mid_run_equals_each_alone(engine, newcomer_params):
    """A server's path: a request joins a running batch after 6 tokens, another one
    leaves later; the newcomer samples with the batch's parameters or its own. Oracle:
    each prompt alone (sampled, its own seed and parameters)."""
    gen = engine.generator(PROMPTS[2], seed=7, **SAMPLED)
    got = {0: [int(gen.next_token()[0]) for _ in range(6)], 1: []}
    newcomer = engine.generator(PROMPTS[1], seed=8, **newcomer_params)
    gen.join(newcomer)
    assert gen.batch == 2 and _has_pads(gen.decoder)
    for _ in range(12):
        token = gen.next_token()
        got[0].append(int(token[0]))
        got[1].append(int(token[1]))
    gen.leave([0])
    got[1] += [int(gen.next_token()[0]) for _ in range(5)]
    gen.close()
    assert got[0] == engine.generate(PROMPTS[2], 18, seed=7, **SAMPLED).ids
    assert got[1] == engine.generate(PROMPTS[1], 17, seed=8, **newcomer_params).ids


def test_decoder_join_select_and_state(any_engine):
    """Runner level: after `Decoder.join` the state (concat form: the shared decoder's
    `host_state` gives it too) has the shorter cache left-padded with mask 0 and the
    carries stacked; `select` reorders and drops rows and the all-pad columns with them.
    Oracle: the state each decoder held alone."""
    runner = any_engine.runner
    a, b = runner.decoder(1), runner.decoder(1)
    a.step(np.array([PROMPTS[0]]), np.arange(3)[None])
    b.step(np.array([PROMPTS[1]]), np.arange(9)[None])
    sa, sb = a.host_state(), b.host_state()
    a.join(b)
    assert b.released and a.batch == 2 and a.past == 9
    joined = a.host_state()
    np.testing.assert_array_equal(joined.mask, [[0] * 6 + [1] * 3, [1] * 9])
    for name, value in sa.arrays.items():
        if name.startswith("past_key_values."):
            np.testing.assert_array_equal(joined.arrays[name][0, :, 6:], value[0])
            assert not joined.arrays[name][0, :, :6].any()
        else:
            np.testing.assert_array_equal(joined.arrays[name][0], value[0])
        np.testing.assert_array_equal(joined.arrays[name][1], sb.arrays[name][0])
    a.select([1, 0])
    np.testing.assert_array_equal(a.host_state().mask, [[1] * 9, [0] * 6 + [1] * 3])
    a.leave([0])
    assert a.batch == 1 and a.past == 3 and not _has_pads(a)  # the pads left with the row
    for name, value in a.host_state().arrays.items():
        np.testing.assert_array_equal(value, sa.arrays[name])
    a.release()


def test_join_and_leave_refusals(engine):
    """Oracle: the ScredgeError messages; a refused join leaves both batches as they were."""
    from scredge.errors import ScredgeError

    gen = engine.generator(PROMPTS[0], temperature=0)
    other = engine.generator(temperature=0.5, seed=1)  # no prompt yet
    with pytest.raises(ScredgeError, match="two started generators"):
        gen.join(other)
    assert gen.batch == 1 and other.batch is None and not gen.decoder.padded
    with pytest.raises(ScredgeError, match="outside the batch"):
        gen.leave([1])
    with pytest.raises(ScredgeError, match="join\\(\\) takes other decoders"):
        gen.decoder.join(gen.decoder)
    gen.leave([0])  # every row gone: the generation ends, its decoder handed back
    assert gen.is_done() and gen.decoder is None
