"""benchmarks/bench_export_genai.py's `timed` (also bench_quant_export.py's): each run's
output is kept in its log, and a failed run stops naming the log. Oracle: what the child
printed, and its exit status."""

from __future__ import annotations

import sys

import pytest
from scripts import load_script


def test_timed_keeps_the_output_and_a_failure_names_its_log(tmp_path):
    bench = load_script("benchmarks/bench_export_genai.py")
    ok = tmp_path / "logs" / "ok.log"
    # the child lives 0.5 s: the memory sampler (every 0.2 s) sees its tree at least once
    r = bench.timed([sys.executable, "-c", "import sys, time; print('out', flush=True); "
                                           "print('err', file=sys.stderr); time.sleep(0.5)"], ok)
    assert set(r) == {"wall_s", "cpu_s", "peak_rss_mib", "tree_pss_mib"}
    assert r["peak_rss_mib"] > 0 and r["tree_pss_mib"] > 0
    lines = [line.split(None, 2) for line in ok.read_text().splitlines()]  # seconds, MiB, text
    assert [text for _, _, text in lines] == ["out", "err"]
    assert all(mib.endswith("M") for _, mib, _ in lines)
    assert (ok.parent / "ok.log.rss").is_file()  # the memory samples beside the log
    bad = tmp_path / "logs" / "bad.log"
    with pytest.raises(SystemExit) as stop:
        bench.timed([sys.executable, "-c", "print('the reason'); raise SystemExit(3)"], bad)
    assert str(bad) in str(stop.value) and "the reason" in str(stop.value)
    assert "the reason" in bad.read_text()
