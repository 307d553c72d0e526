"""benchmarks/bench_quant.py's gptq variant. Oracles: the export's own calibration checks
(the text it writes must pass them) and the command line it would run."""

from __future__ import annotations

import subprocess

from scripts import load_script

from scredge.export.gptq import calibration_text


def test_gptq_variant_exports_with_a_calibration_text_the_exporter_accepts(tmp_path,
                                                                           monkeypatch):
    bench = load_script("benchmarks/bench_quant.py")
    ran = []

    def fake_run(cmd, **kwargs):
        ran.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    bench.export("small", "int4-gptq", tmp_path)
    bench.export("small", "int4", tmp_path)
    gptq, rtn = ran
    text = tmp_path / "calibration.txt"
    assert gptq[gptq.index("--calibration") + 1] == str(text)
    assert gptq[gptq.index("--quant-method") + 1] == "gptq"
    assert "--calibration" not in rtn
    data = calibration_text(text)  # UTF-8, long enough, not the held-out text
    assert len(data) == bench.CALIBRATION_BYTES
