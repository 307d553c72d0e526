"""benchmarks/bench_serve.py at toy size (1 and 2 clients, 6 tokens, one repeat) on the served
micro model. Oracle: the measures' definitions (rates and latencies positive, the speedup
the ratio of the two rates) and the scheduler's own count of rows decoded together."""

from __future__ import annotations

import math

from scripts import load_script


def test_bench_serve_smoke(served_folder, capsys):
    bench = load_script("benchmarks/bench_serve.py")
    rows = bench.main(["--folder", str(served_folder), "--clients", "1", "2", "--tokens", "6",
                       "--repeat", "1"])
    assert [r["clients"] for r in rows] == [1, 2]
    for r in rows:
        c, s = r["concurrent"], r["one_at_a_time"]
        assert c["tokens_per_s"] > 0 and s["tokens_per_s"] > 0
        assert math.isclose(r["speedup"], c["tokens_per_s"] / s["tokens_per_s"])
        assert 0 < c["ttft_p50"] <= c["ttft_p99"]
    assert rows[0]["peak_batch"] == 1
    assert rows[1]["peak_batch"] >= 1
    assert "2 clients" in capsys.readouterr().out
