"""The export's reference pass (export/reference_pass.py): its greedy tokens found by prompt
lookup against the reference's own one-token-a-call greedy loop (scredge.ref.generation's
`generate`, the oracle), and the replayed verification against the golden it recorded."""

import numpy as np
import pytest

from scredge.config import SCRConfig
from scredge.export import reference_pass
from scredge.export.reference_pass import lookup_greedy, periodic, replayed_reference
from scredge.ref import build_model
from scredge.ref.generation import generate


@pytest.mark.parametrize("window", [None, 6])
def test_lookup_greedy_equals_one_token_a_call(window):
    """Oracle: generate(); SCR layers and a window (the cache trimmed inside a call) make a
    rejected proposal's state need the rerun."""
    model = build_model(SCRConfig().with_(window=window), seed=3)
    prompt = [5, 9, 5, 9, 5, 9, 11]
    stats: dict = {}
    got = lookup_greedy(model, prompt, 48, k=6, stats=stats)
    assert got == generate(model, prompt, 48)[0]
    assert stats["calls"] < 48 and stats["accepted"] > 0  # the lookup saved calls


@pytest.mark.parametrize("scr_layers", [None, ()])
def test_rejected_proposals_keep_the_exact_state(monkeypatch, scr_layers):
    """Oracle: generate(); every proposal is wrong from its second token on, so every call
    is cut short and its state rebuilt from the tokens kept (rerun with SCR layers, the
    KV cache cut without)."""
    c = SCRConfig()
    model = build_model(c if scr_layers is None else c.with_(scr_layers=scr_layers), seed=4)
    prompt = list(range(3, 15))

    def wrong(drafts, k):
        good = periodic(drafts, k)
        return [*good[:1], *[(t + 1) % model.config.vocab_size for t in good[1:]]]

    monkeypatch.setattr(reference_pass, "periodic", wrong)
    stats: dict = {}
    assert lookup_greedy(model, prompt, 24, k=4, stats=stats) == generate(model, prompt, 24)[0]
    assert stats["proposed"] > stats["accepted"]


def test_periodic_continues_a_cut_short_proposal():
    """Oracle: the period written out by hand."""
    assert periodic([7], 4) == [7, 7, 7, 7]
    assert periodic([1, 2], 5) == [1, 2, 1, 2, 1]
    assert periodic([], 3) == []


def test_replay_refuses_other_ids():
    """Oracle: the ids recorded; a replay fed others is an internal inconsistency."""
    from scredge.golden_file import Golden

    ids = np.zeros((1, 2), dtype=np.int64)
    g = Golden("", {}, [ids], [np.ones((1, 2, 3), np.float32)], [], {}, [], [], 1.0,
               ids[0], ids[0])
    step = replayed_reference(g)
    with pytest.raises(RuntimeError, match="differ"):
        step(ids + 1, ids)
