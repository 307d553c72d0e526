"""The TensorRT optimisation profiles and the limits read back from them. Oracle: SCR_SPEC
section 3 (input names and shapes, P' = min(P+T, W-1), or P+T for window = null)."""

from __future__ import annotations

import pytest

from scredge.config import SCRConfig
from scredge.errors import ScredgeError
from scredge.runtime import trt_profiles as tp

W16 = SCRConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                window=16, scr_layers=(0, 1))
FULL = W16.with_(window=None, scr_layers=(1,))


def test_windowed_profiles():
    prefill, decode = tp.profiles(W16, max_batch=3, max_prefill=64)
    assert list(prefill) == ["input_ids", "position_ids", "attention_mask",
                             *(f"past_key_values.{i}.{kv}" for i in (0, 1)
                               for kv in ("key", "value")),
                             "scr_past.0.num", "scr_past.0.den", "scr_past.1.num",
                             "scr_past.1.den"]
    assert prefill["input_ids"] == ((1, 1), (1, 64), (3, 64))
    assert prefill["past_key_values.1.value"] == ((1, 2, 0, 8), (1, 2, 0, 8), (3, 2, 0, 8))
    assert decode["position_ids"] == ((1, 1), (1, 1), (3, 1))
    assert decode["past_key_values.0.key"] == ((1, 2, 0, 8), (1, 2, 15, 8), (3, 2, 15, 8))
    assert decode["scr_past.1.num"] == ((1, 32), (1, 32), (3, 32))
    assert decode["scr_past.0.den"] == ((1, 1), (1, 1), (3, 1))
    assert prefill["attention_mask"] == ((1, 1), (1, 64), (3, 64))  # [B, P+T], P = 0
    assert decode["attention_mask"] == ((1, 1), (1, 16), (3, 16))  # P 0..15, T = 1
    assert tp.from_json(tp.to_json([prefill, decode])) == [prefill, decode]


def test_full_causal_profiles_need_max_context():
    with pytest.raises(ScredgeError, match="--max-context"):
        tp.profiles(FULL)
    prefill, decode = tp.profiles(FULL, max_batch=2, max_context=100)
    assert prefill["input_ids"][2] == (2, 100)  # default max_prefill: min(512, max_context)
    assert decode["past_key_values.0.key"][2] == (2, 2, 99, 8)  # P' = P + 1 <= 100
    assert decode["attention_mask"][2] == (2, 100)
    assert "scr_past.0.num" not in decode and "scr_past.1.num" in decode


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_batch=0), "--max-batch"), (dict(max_prefill=0), "--max-prefill"),
    (dict(max_context=64), "only for models with window = null")])
def test_bad_profile_options(kwargs, match):
    with pytest.raises(ScredgeError, match=match):
        tp.profiles(W16, **kwargs)


def test_limits():
    lim = tp.Limits.from_profiles(tp.profiles(W16, max_batch=2, max_prefill=8), W16)
    assert lim == tp.Limits(max_batch=2, max_prefill=8, cache=15, windowed=True)
    lim.check(2, 0, 8)
    lim.check(1, 15, 100)  # a windowed cache never overflows
    with pytest.raises(ScredgeError, match="batch exceeds"):
        lim.check(3, 0, 1)
    with pytest.raises(ScredgeError, match="prompt longer"):
        lim.check(1, 0, 9)
    full = tp.Limits.from_profiles(tp.profiles(FULL, max_context=50, max_prefill=10), FULL)
    assert full.cache == 50 and not full.windowed
    full.check(1, 49, 1)
    with pytest.raises(ScredgeError, match="context limit"):
        full.check(1, 50, 1)
