"""The shared memory refusal (core/memory.py) of `scredge export` and `scredge train`.
Oracles: the sum of the parts against the limit, by hand; /proc/meminfo read here."""

from __future__ import annotations

from pathlib import Path

import pytest

from scredge.errors import ScredgeError
from scredge.memory import GIB, available_cpu_memory, refuse_over_memory

PARTS = {"of weights": 3 * GIB // 2, "for the rest": GIB // 2}  # 2 GiB in all


def test_refused_only_above_the_available_memory():
    refuse_over_memory("the work", PARTS, 2 * GIB, "MemAvailable now", fix="f")  # equal: fits
    refuse_over_memory("the work", PARTS, None, "MemAvailable now", fix="f")  # unknown
    with pytest.raises(ScredgeError) as err:
        refuse_over_memory("the work", PARTS, 2 * GIB - 1, "MemAvailable now",
                           fix="use a larger machine", ignore_note=" (it may swap)")
    text = str(err.value)
    assert "the work would need more memory than is available" in text
    assert "estimate 2.00 GiB: 1.50 GiB of weights + 0.50 GiB for the rest" in text
    assert "at most 2.00 GiB (MemAvailable now)" in text
    assert "use a larger machine, or pass --ignore-memory-check (it may swap)" in text


def test_available_cpu_memory_is_meminfo():
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        assert available_cpu_memory() is None
        return
    kib = next(int(line.split()[1]) for line in meminfo.read_text().splitlines()
               if line.startswith("MemAvailable:"))
    assert abs(available_cpu_memory() - kib * 1024) < GIB // 4  # it moves between reads
