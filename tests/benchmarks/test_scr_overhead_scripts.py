"""benchmarks/profile_scr.py and benchmarks/bench_scr_overhead.py at toy size, on one exported
pair (SCR on both layers, and the same weights without SCR). Oracles: onnxruntime's own
optimised graph (the profile must see each of its nodes once per run), the pair's configs,
and the ratios' definition (with-SCR median over without-SCR median)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from scripts import load_script

from scredge.config import SCRConfig

pytestmark = pytest.mark.slow  # run by `make test-all`, not the default `make test`

CFG = SCRConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                window=16, scr_layers=(0, 1))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("scr-overhead")
    (root / "cfg.json").write_text(CFG.to_json())
    bench = load_script("benchmarks/bench_scr_overhead.py")
    return bench, root, bench.ensure_pair("config", root, root / "cfg.json")


def _optimised_node_count(folder, tmp_path) -> int:
    from scredge.runtime.loaders import ort_session

    optimized = tmp_path / f"{folder.name}.onnx"
    ort_session(folder / "model.onnx", "cpu", threads=1, save_optimized=optimized)
    return len(onnx.load(str(optimized)).graph.node)


def test_pair_differs_only_in_scr(pair):
    _, _, p = pair
    scr = json.loads((p.scr / "config.json").read_text())["model"]
    plain = json.loads((p.plain / "config.json").read_text())["model"]
    assert scr["scr_layers"] == [0, 1] and plain["scr_layers"] == []
    assert {k: v for k, v in scr.items() if k != "scr_layers"} == \
        {k: v for k, v in plain.items() if k != "scr_layers"}


def test_profile_counts_every_node_once_per_run(pair, tmp_path):
    _, _, p = pair
    prof = load_script("benchmarks/profile_scr.py")
    dec, pre = prof.profile(p.scr, steps=2, prompt=4, prefill=8, threads=1, prefills=1)
    plain_dec, _ = prof.profile(p.plain, steps=2, prompt=4, prefill=8, threads=1, prefills=1)
    n_scr, n_plain = (_optimised_node_count(f, tmp_path) for f in (p.scr, p.plain))
    assert sum(dec.nodes.values()) == sum(pre.nodes.values()) == n_scr
    assert sum(plain_dec.nodes.values()) == n_plain
    assert plain_dec.scr_nodes == 0 and 0 < dec.scr_nodes <= n_scr - n_plain
    assert dec.nodes["CumSum"] == 2 * len(CFG.scr_layers)  # two per Realign
    assert dec.wall_us > 0 and all(us >= 0 for us in dec.kernel_us.values())
    lines = prof.table(dec, plain_dec, "toy decode")
    assert "| CumSum | " in "\n".join(lines)  # SCR's alone: listed as a difference
    assert sum(line.startswith("| **model_run** |") for line in lines) == 1


def test_overhead_ratios_are_medians_over_rounds(pair, realign_ort_library):
    bench, root, _ = pair
    results = bench.main(["--config", str(root / "cfg.json"), "--artifacts", str(root),
                          "--rounds", "1", "--steps", "3", "--prompt", "4", "--prefill", "8",
                          "--realign", "both"])
    r = results["config"]
    assert set(r["samples"]) == {"scr:custom-op", "scr:function", "plain"}
    assert all(len(v) == 1 for v in r["samples"].values())
    assert r["variants"]["scr:function"]["realign"] == "function"
    # the kernel where it is built (and passes its probe), else the child fails loudly
    assert r["variants"]["scr:custom-op"]["realign"] == "custom-op"
    for key, variant in r["variants"].items():
        for m in bench.METRICS:
            scr = float(np.median([s[m] for s in r["samples"][key]]))
            plain = float(np.median([s[m] for s in r["samples"]["plain"]]))
            assert variant[m]["scr"] == pytest.approx(scr)
            assert variant[m]["plain"] == pytest.approx(plain)
            assert variant[m]["ratio"] == pytest.approx(scr / plain) and plain > 0
