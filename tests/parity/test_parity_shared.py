"""`scredge parity` on the shared KV-cache form (SCR_SPEC v3 section 3). Oracle: one golden
file recorded once from `scr_ref` (on the concat artifact) replays on both forms of the same
weights, and every tier of section 5 passes on each."""

from __future__ import annotations

import json
import shutil

import pytest

from scredge.artifact import add_to_manifest
from scredge.cli import main
from scredge.contract import GOLDEN_FILE, GRAPH_VERSION_KEY, GRAPHS_KEY
from scredge.runtime.loaders import load_ort, open_artifact
from scredge.runtime.shared_cache import SharedDecoder

pytestmark = pytest.mark.slow  # two artifact exports and a recording: minutes here

TIERS = {"op (Realign)", "layer", "logits", "teacher-forced decode", "free-running greedy"}


@pytest.fixture(scope="module")
def both_forms(small_window_artifact, tmp_path_factory):
    """(concat folder with the golden file, the default (shared) folder of the same weights
    with a copy)."""
    from scredge.export.pipeline import export_artifact

    model, shared_src = small_window_artifact
    root = tmp_path_factory.mktemp("shared_parity")
    concat = export_artifact(model, root / "concat", cache="concat")
    assert main(["parity", str(concat), "--record"]) == 0  # recorded once
    shared = root / "shared"
    shutil.copytree(shared_src, shared)
    (shared / GOLDEN_FILE).parent.mkdir(exist_ok=True)
    shutil.copy(concat / GOLDEN_FILE, shared / GOLDEN_FILE)
    add_to_manifest(shared, [GOLDEN_FILE])
    return concat, shared


def test_shared_artifact_names_its_forms(both_forms):
    _, shared = both_forms
    config = json.loads((shared / "config.json").read_text())
    assert config[GRAPH_VERSION_KEY] == 3
    assert config[GRAPHS_KEY] == {"ort": "model.onnx", "trt": "model.trt.onnx"}
    assert config["cache"] == {"ort": "shared", "trt": "concat"}
    artifact = open_artifact(shared)
    assert artifact.cache_form("ort") == "shared" and artifact.graph_file("trt") == (
        "model.trt.onnx")
    assert isinstance(load_ort(artifact, "cpu").decoder(1), SharedDecoder)


@pytest.mark.parametrize("form", [0, 1], ids=["concat", "shared"])
def test_one_golden_file_replays_on_both_forms(both_forms, form, capsys):
    folder = both_forms[form]
    assert main(["parity", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    tiers = {t["tier"]: t for t in report["tiers"]}
    assert report["passed"] and set(tiers) == TIERS
    assert all(t["passed"] for t in tiers.values())
    assert tiers["free-running greedy"]["metrics"]["agreement_length"] == 256
