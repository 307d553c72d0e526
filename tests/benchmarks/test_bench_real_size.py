"""benchmarks/bench_real_size.py at a toy size (the real size runs by hand: docs/performance.md).
Oracle: the script's own chain of real commands (save_pretrained, scredge export
--from-llama, scredge bench --compare torch) finishing and reporting sane figures."""

from __future__ import annotations

import pytest
from scripts import load_script

pytestmark = pytest.mark.slow  # run by `make test-all`, not the default `make test`

pytest.importorskip("transformers", reason="transformers (dev extra) not installed")


def test_smoke_size_runs_end_to_end(capsys):
    bench = load_script("benchmarks/bench_real_size.py")
    r = bench.main(["--size", "smoke", "--prompt-len", "8", "--gen-len", "4", "--repeat", "1"])
    shape = bench.SHAPES["smoke"]
    embed = shape["vocab_size"] * shape["hidden_size"]
    assert embed < r["parameters"] < 4 * embed
    assert r["export"]["wall_s"] > 0 and r["export"]["peak_rss_mib"] > 50
    assert r["export"]["artifact_mib"] > 0
    d = r["decode"]
    assert d["ort_tokens_per_s"] > 0 and d["torch_tokens_per_s"] > 0
    assert d["ratio_decode"] == pytest.approx(d["ort_tokens_per_s"] / d["torch_tokens_per_s"])
    out = capsys.readouterr().out
    assert "export (--from-llama" in out and "tok/s" in out
