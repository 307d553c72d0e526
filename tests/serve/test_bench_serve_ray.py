"""benchmarks/bench_serve_ray.py at toy size (2 clients, 4 tokens, one round, one replica
count) on the served micro model. Oracle: the measures' definitions (rates positive, each
setup's ratio against the plain server's rate of the same client count, the plain one
1.0) and the setups it names."""

from __future__ import annotations

import math

import pytest
from scripts import load_script

pytestmark = pytest.mark.slow  # a local Ray cluster: about half a minute
pytest.importorskip("ray.serve", reason="needs the ray extra")


def test_bench_serve_ray_smoke(served_folder, capsys):
    bench = load_script("benchmarks/bench_serve_ray.py")
    rows = bench.main(["--folder", str(served_folder), "--clients", "2", "--replicas", "1",
                       "--tokens", "4", "--repeat", "1"])
    assert [r["setup"] for r in rows] == ["plain scredge serve", "ray, 1 replica"]
    plain = rows[0]["tokens_per_s"]
    for r in rows:
        assert r["tokens_per_s"] > 0 and r["server_cpu_s"] >= 0
        assert math.isclose(r["vs_plain"], r["tokens_per_s"] / plain)
    assert "ray, 1 replica" in capsys.readouterr().out
