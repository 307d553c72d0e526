"""The export's memory check (export/memory_check.py): refused before any work with the
estimate. Oracles: the peak RSS measured in docs/performance-export.md (the estimate must
cover it) and the file system (nothing written)."""

from __future__ import annotations

import pytest

from scredge import memory
from scredge.config import SCRConfig
from scredge.errors import ScredgeError
from scredge.export.memory_check import check_export_memory, export_memory_estimate
from scredge.export.pipeline import export_artifact
from scredge.ref import build_model

MIB = 1 << 20
# SmolLM2-135M's shape: measured 1,046-1,110 MiB (exporting process) + ~730 MiB (trace child)
SMOLLM2 = SCRConfig(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                    d_ff=1536, tie_embeddings=True, scr_layers=())


def test_estimate_covers_the_measured_peak():
    est = export_memory_estimate(SMOLLM2)
    assert 500 * MIB < est["weights"] < 560 * MIB
    assert est["total"] >= (1110 + 730) * MIB


def test_too_large_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_cpu_memory", lambda: 100 * MIB)
    with pytest.raises(ScredgeError, match="more memory than is available") as err:
        export_artifact(build_model(SCRConfig()), tmp_path / "art")
    assert "GiB" in str(err.value) and "--ignore-memory-check" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_unknown_memory_is_not_checked():
    assert check_export_memory(SMOLLM2, None)["total"] > 0
