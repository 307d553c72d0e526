"""benchmarks/retrofit_experiment.py's runs. Oracle: the issue's definition of the fair
baseline: both continuations start from the pretrained run and see the same steps, batches
(seed) and tokens, differing only in SCR (added, SCR-only training) vs the plain model
trained on; the pretrained model has no SCR and a window shorter than the key distance.
(The script's full run is the committed benchmarks/results/retrofit_experiment.)"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from scripts import load_script

pytestmark = pytest.mark.slow  # run by `make test-all`, not the default `make test`


def _flags(cmd: list[str]) -> dict[str, str]:
    args = cmd[cmd.index("train") + 1:]
    return {a: (args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else "")
            for i, a in enumerate(args) if a.startswith("--")}


def test_continuations_differ_only_in_scr(tmp_path):
    module = load_script("benchmarks/retrofit_experiment.py")
    parser_defaults = dict(window=32, gap=(48, 128), doc_bytes=1024, pretrain_steps=800,
                           steps=1200, batch_size=8, seq_len=192, lr=3e-3, docs=400, threads=1,
                           device="cpu", preset=None)
    args = argparse.Namespace(**parser_defaults)
    pre, scr, base = (_flags(module.command(n, tmp_path, args)) for n in module.RUNS)
    assert pre["--scr-layers"] == "none" and int(pre["--window"]) < args.gap[0]
    assert scr["--init"] == base["--init"] == str(Path(tmp_path) / "pretrain")
    assert (scr["--scr-layers"], scr["--trainable"]) == ("all", "scr")
    assert base["--trainable"] == "all" and "--scr-layers" not in base
    same = {k: v for k, v in scr.items() if k not in ("--scr-layers", "--trainable", "--out")}
    assert same == {k: v for k, v in base.items() if k not in ("--trainable", "--out")}
    assert scr["--steps"] == "1200" and scr["--seed"] == "1" != pre["--seed"]
    with pytest.raises(SystemExit):  # a gap inside the window would test nothing
        module.main(["--window", "32", "--gap", "16,40", "--out", str(tmp_path)])
