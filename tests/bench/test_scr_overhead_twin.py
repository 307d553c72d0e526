"""The SCR-free twin of a quantized artifact is quantized the same way (issue 17, item 4).
Oracle: config.json's `quantization` section as export/quantize.py writes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from scredge.bench.scr_overhead import twin_quantization
from scredge.errors import ScredgeError
from scredge.export.quantize import QuantSpec


def test_twin_repeats_the_artifacts_quantization():
    """A float artifact gives no spec; rtn and hqq sections give their own bits, block and
    method back."""
    assert twin_quantization({}, Path("a")) is None
    rtn = {"bits": 8, "block_size": 32, "method": "rtn", "symmetric": True}
    assert twin_quantization(rtn, Path("a")) == QuantSpec(8, 32, "rtn")
    hqq = {"bits": 4, "block_size": 64, "method": "hqq"}
    assert twin_quantization(hqq, Path("a")) == QuantSpec(4, 64, "hqq")


def test_a_method_the_twin_cannot_repeat_is_refused():
    """Oracle: ScredgeError naming the method, not a silently different twin."""
    with pytest.raises(ScredgeError, match="cannot repeat this quantization"):
        twin_quantization({"bits": 4, "block_size": 32, "method": "awq"}, Path("a"))
