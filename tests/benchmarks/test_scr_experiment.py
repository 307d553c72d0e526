"""benchmarks/scr_experiment.py end to end at toy size: two `scredge train` runs (SCR and
baseline), held-out evaluation, table and plot. Oracle: the measures' own definitions
(losses are mean NLLs in nats, accuracies fractions), and the two runs differing only in
their SCR layers."""

from __future__ import annotations

import json
import math

import pytest
from scripts import load_script


@pytest.mark.slow
def test_experiment_runs_end_to_end(tmp_path):
    module = load_script("benchmarks/scr_experiment.py")
    out = tmp_path / "exp"
    code = module.main(["--window", "16", "--gap", "24,48", "--doc-bytes", "300", "--docs", "24",
                        "--steps", "3", "--batch-size", "2", "--seq-len", "64",
                        "--eval-docs", "3", "--gen-docs", "2", "--gen-bytes", "12",
                        "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    scr, base = results["scr"], results["baseline"]
    assert scr["scr_layers"] == [0, 1, 2, 3] and base["scr_layers"] == []
    assert scr["window"] == base["window"] == 16
    for r in (scr, base):
        assert 0 < r["loss_recall_word"] < 10 and 0 < r["loss_positions_beyond_window"] < 10
        assert 0 <= r["recall_word_accuracy"] <= 1 and r["recalls"] > 0
        assert 0 < r["entropy_per_byte"] <= math.log(256) + 1e-9
        assert 0 < r["head_deviation"] <= math.log(2)
        assert len(r["head_deviation_per_layer_pair"]) == 3  # tiny: 4 layers
        assert r["train_peak_rss_mib"] > 0 and r["train_s_per_step"] > 0
    assert scr["decode_state_bytes"] > base["decode_state_bytes"]  # + num/den per SCR layer
    table = (out / "results.md").read_text()
    assert table.count("\n") == len(module.ROWS) + 3  # header, rule, rows, the interval row
    assert len(results["recall_difference_ci95"]) == 2
    assert (out / "scr_experiment.png").stat().st_size > 1000
    with pytest.raises(SystemExit):  # a gap inside the window would test nothing
        module.main(["--window", "32", "--gap", "16,40", "--out", str(out)])
