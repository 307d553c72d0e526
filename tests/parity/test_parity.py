"""`scredge parity`. Oracles: the golden file recorded from `scr_ref`; an injected fault of
known place (one weight of layer 1 scaled in a copy of the ONNX) must be caught by the layer
tier and bisected to layer 1 at the first call, the prefill."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from scredge.artifact import add_to_manifest
from scredge.cli import main
from scredge.contract import GOLDEN_FILE, ONNX_FILE
from scredge.errors import ScredgeError
from scredge.tiers import tier_thresholds


def test_record_lists_the_golden_file_and_passes(recorded, capsys):
    manifest = json.loads((recorded / "manifest.json").read_text())
    assert GOLDEN_FILE in manifest["files"]
    assert main(["parity", str(recorded), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["first_divergence"] is None
    tiers = {t["tier"]: t for t in report["tiers"]}
    assert set(tiers) == {"op (Realign)", "layer", "logits", "teacher-forced decode",
                          "free-running greedy"}
    assert tiers["free-running greedy"]["metrics"]["agreement_length"] == 256
    assert tiers["teacher-forced decode"]["metrics"]["steps"] == 16


def test_replay_without_torch(recorded):
    """The golden file travels: a child with `import torch` blocked runs every tier."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from scredge.cli import main\n"
            f"raise SystemExit(main(['parity', {str(recorded)!r}]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "overall: PASS" in result.stdout


def _inject_fault(folder, layer: int, scale: float = 1.05) -> None:
    model = onnx.load(str(folder / ONNX_FILE))
    name = f"/model/layers.{layer}/mlp/down_proj/MatMul"
    node = next(n for n in model.graph.node if n.name == name)
    init = next(i for i in model.graph.initializer if i.name in node.input)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * scale, init.name))
    onnx.save(model, str(folder / ONNX_FILE))
    add_to_manifest(folder, [ONNX_FILE])  # a consistent folder with a real defect inside


@pytest.mark.parametrize("form", ["shared", "concat"])
def test_injected_fault_is_bisected_to_its_layer_and_step(form, request, tmp_path, capsys):
    """Both forms bisect the fault; the concat form's first divergent call is dumped for
    polygraphy, the shared form (no single-call replay) refuses --dump by name."""
    faulty = tmp_path / "faulty"
    shutil.copytree(request.getfixturevalue("recorded" if form == "shared"
                                            else "recorded_concat"), faulty)
    capsys.readouterr()  # what recording the fixture printed
    _inject_fault(faulty, layer=1)
    dump = tmp_path / "repro"
    if form == "shared":
        assert main(["parity", str(faulty), "--dump", str(dump)]) == 2
        assert "--cache concat" in capsys.readouterr().err and not dump.exists()
    assert main(["parity", str(faulty), "--json",
                 *(["--dump", str(dump)] if form == "concat" else [])]) == 1
    report = json.loads(capsys.readouterr().out)
    first = report["first_divergence"]
    assert (first["step"], first["layer"], first["tier"]) == (0, 1, "layer")
    tiers = {t["tier"]: t["passed"] for t in report["tiers"]}
    assert tiers["layer"] is False and tiers["logits"] is False
    assert tiers["op (Realign)"] is True  # the op itself is fine: the fault is elsewhere
    if form == "shared":
        return
    with np.load(dump / "inputs.npz") as z:
        assert z["input_ids"].shape == (2, 24) and "past_key_values.0.key" in z.files
    assert "polygraphy run" in (dump / "README.txt").read_text()
    _polygraphy_replays(faulty / ONNX_FILE, dump / "inputs.json")


def _polygraphy_replays(model, inputs) -> None:
    """Oracle: polygraphy itself loads the dumped inputs and runs them in onnxruntime."""
    from pathlib import Path

    pytest.importorskip("polygraphy", reason="polygraphy (dev extra) not installed")
    exe = Path(sys.executable).with_name("polygraphy")
    result = subprocess.run([str(exe), "run", str(model), "--onnxrt", "--load-inputs",
                             str(inputs)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "PASSED" in result.stdout + result.stderr


def test_golden_of_another_model_is_refused(recorded, small_window_artifact, tmp_path):
    from scredge.export.pipeline import export_artifact
    from scredge.ref import build_model

    other = tmp_path / "other"
    export_artifact(build_model(small_window_artifact[0].config, seed=99), other)
    (other / "parity").mkdir()
    shutil.copy(recorded / GOLDEN_FILE, other / GOLDEN_FILE)
    add_to_manifest(other, [GOLDEN_FILE])
    with pytest.raises(ScredgeError, match=r"recorded for another model(.|\n)*--record"):
        from scredge.golden_file import Golden
        from scredge.parity.ort_tiers import run_parity
        from scredge.runtime.loaders import load_ort, open_artifact

        artifact = open_artifact(other)
        run_parity(artifact, Golden.load(other / GOLDEN_FILE), load_ort(artifact),
                   tier_thresholds("float32"))


def test_refusals(small_window_artifact, capsys):
    with pytest.raises(ScredgeError, match="no parity thresholds"):
        tier_thresholds("int8")
    folder = str(small_window_artifact[1])
    assert main(["parity", folder]) == 2  # no golden file recorded there
    assert "--record" in capsys.readouterr().err
    assert main(["parity", folder, "--backend", "trt"]) == 2


def test_threshold_overrides_apply(recorded, capsys):
    """An impossible KL bound makes the logits tier fail: overrides reach the tiers."""
    assert main(["parity", str(recorded), "--kl", "-1", "--json"]) == 1
    tiers = {t["tier"]: t["passed"] for t in json.loads(capsys.readouterr().out)["tiers"]}
    assert tiers["logits"] is False and tiers["layer"] is True


def test_runner_parity_runs_the_runner_tiers(recorded, capsys):
    """The path of `--backend trt`, driven with the onnxruntime runner: logits, teacher-forced
    and greedy pass through the runner's decoder; op and layer are reported as not run."""
    from scredge.golden_file import Golden
    from scredge.parity.runner_tiers import runner_parity
    from scredge.runtime.loaders import load_ort, open_artifact

    artifact = open_artifact(recorded)
    result = runner_parity(artifact, Golden.load(recorded / GOLDEN_FILE), load_ort(artifact),
                           tier_thresholds("float32"))
    tiers = {t.tier: t for t in result.tiers}
    assert result.passed and result.first_divergence is None
    assert tiers["op (Realign)"].passed is None and "not run" in tiers["layer"].summary
    assert all(tiers[t].passed for t in ("logits", "teacher-forced decode",
                                         "free-running greedy"))
    assert main(["parity", str(recorded), "--backend", "trt"]) == 2
    assert "no TensorRT engine" in capsys.readouterr().err


def test_live_comparison_needs_no_golden_file(small_window_artifact, capsys):
    """Oracle: scr_ref run now, in this process (torch present); nothing is written."""
    folder = small_window_artifact[1]
    before = sorted(p.name for p in folder.rglob("*"))
    assert main(["parity", str(folder), "--live"]) == 0
    assert "overall: PASS" in capsys.readouterr().out
    assert sorted(p.name for p in folder.rglob("*")) == before
