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
