"""`scredge bench`. Oracles: the raw samples the result carries; percentiles recomputed here
from them, and counts from the settings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scredge.bench.latency import percentiles
from scredge.cli import main

KEYS = {"backend", "settings", "ttft_s", "prefill_tokens_per_s", "itl_s",
        "decode_tokens_per_s", "samples", "peak_rss_mib", "gpu_memory_used_mib", "machine"}


def test_bench_json_schema_and_percentiles(small_window_artifact, capsys):
    folder = str(small_window_artifact[1])
    assert main(["bench", folder, "--prompt-len", "8", "--gen-len", "20", "--repeat", "3",
                 "--warmup", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert KEYS <= set(r)
    itl = r["samples"]["itl_s"]
    assert len(itl) == 3 * 19 and len(r["samples"]["ttft_s"]) == 3
    for q in (50, 90, 99):
        assert r["itl_s"][f"p{q}"] == pytest.approx(float(np.percentile(itl, q)))
    assert r["decode_tokens_per_s"] == pytest.approx(1 / float(np.median(itl)))
    assert r["ttft_s"] == pytest.approx(float(np.median(r["samples"]["ttft_s"])))
    assert {"cpu", "cores", "libraries"} <= set(r["machine"])


def test_percentiles_interpolate():
    """Oracle: hand-computed linear interpolation on 1..5."""
    assert percentiles([5, 1, 4, 2, 3], qs=(50, 90)) == {"p50": 3.0, "p90": 4.6}


def test_compare_torch_and_sweep(small_window_artifact, capsys, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib (plot extra) not installed")
    folder = str(small_window_artifact[1])
    png = tmp_path / "sweep.png"
    assert main(["bench", folder, "--prompt-len", "8", "--gen-len", "8", "--repeat", "1",
                 "--compare", "torch", "--sweep", "4,16", "--plot", str(png), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["compare"]["ratios"]["decode_tokens_per_s"] > 0
    assert [row["context"] for row in r["sweep"]] == [4, 16]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_settings(small_window_artifact, capsys):
    assert main(["bench", str(small_window_artifact[1]), "--gen-len", "0"]) == 2
    assert "--gen-len must be >= 1" in capsys.readouterr().err


def test_scr_overhead_mode(small_window_artifact, capsys):
    """Oracle: the two children's own reports; the ratios are computed from them."""
    assert main(["bench", str(small_window_artifact[1]), "--scr-overhead", "--prompt-len", "8",
                 "--gen-len", "8", "--repeat", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    w, wo = r["with_scr"], r["without_scr"]
    assert r["ratios"]["decode_latency"] == pytest.approx(
        wo["decode_tokens_per_s"] / w["decode_tokens_per_s"])
    assert r["ratios"]["peak_rss"] == pytest.approx(w["peak_rss_mib"] / wo["peak_rss_mib"])
    assert wo["peak_rss_mib"] < 400, "the child must not inherit the parent's peak RSS"
