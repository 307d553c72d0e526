"""Slim deployable folders (SCR_SPEC section 4, v3): `scredge export` keeps the float32
reference weights only with --keep-reference, writes only the graphs --target asks for, and
whatever needs the reference weights says so, naming the flag. Oracles: the spec's file
list, the manifest check, the golden file's and config's record of the weights' sha256
(equal to the kept file's when kept), the parity tiers run on the slim folder, and the
refusals' messages."""

from __future__ import annotations

import json

import pytest
from onnx_graphs import export_graph_stand_in

from scredge.artifact import read_config, sha256_file, verify_manifest
from scredge.cli import main
from scredge.config import SCRConfig
from scredge.contract import GOLDEN_FILE, HELDOUT_FILE, ONNX_FILE, TRT_ONNX_FILE, WEIGHTS_FILE
from scredge.errors import ScredgeError
from scredge.golden_file import Golden
from scredge.runtime import Engine
from scredge.runtime.loaders import open_artifact

MICRO = SCRConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                  window=8, scr_layers=(0, 1))


def _files(folder) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{"slim": folder, "kept": folder}: the same seeded micro model through the CLI, without
    and with --keep-reference."""
    root = tmp_path_factory.mktemp("slim")
    config = root / "micro.json"
    config.write_text(MICRO.to_json())
    out = {}
    for name, extra in (("slim", []), ("kept", ["--keep-reference"])):
        argv = ["export", "--config", str(config), "--out", str(root / name), *extra]
        assert main(argv) == 0
        out[name] = root / name
    return out


def test_default_folder_holds_graph_golden_and_config_only(exported):
    folder = exported["slim"]
    assert _files(folder) == ["config.json", "manifest.json", ONNX_FILE, TRT_ONNX_FILE,
                              GOLDEN_FILE]
    verify_manifest(folder)
    _, raw = read_config(folder)
    reference = raw["export"]["reference"]
    # the default: a shared-cache onnxruntime graph, the concat TensorRT graph beside it
    assert reference["kept"] is False and raw["graphs"] == {"ort": ONNX_FILE,
                                                            "trt": TRT_ONNX_FILE}
    assert raw["export"]["target"] == "all"
    # the golden file recorded at export names the weights the kept folder stores
    kept = exported["kept"]
    assert reference["sha256"] == sha256_file(kept / WEIGHTS_FILE)
    assert Golden.load(folder / GOLDEN_FILE).weights_sha256 == reference["sha256"]


def test_kept_folder_has_the_weights_and_no_golden(exported):
    folder = exported["kept"]
    assert _files(folder) == ["config.json", "manifest.json", ONNX_FILE, WEIGHTS_FILE,
                              TRT_ONNX_FILE]
    _, raw = read_config(folder)
    assert raw["export"]["reference"] == {"sha256": sha256_file(folder / WEIGHTS_FILE),
                                          "kept": True}


def test_parity_runs_on_the_slim_folder(exported, capsys):
    """The golden reference the export recorded is checked by every tier, no weights
    needed."""
    assert main(["parity", str(exported["slim"]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True


@pytest.mark.parametrize("argv", [
    ["parity", "{folder}", "--record"],
    ["parity", "{folder}", "--live"],
    ["export-hf", "{folder}", "{out}"],
    ["bench", "{folder}", "--compare", "torch", "--prompt-len", "4", "--gen-len", "2"],
])
def test_what_needs_the_reference_names_keep_reference(exported, tmp_path, capsys, argv):
    folder = exported["slim"]
    before = {n: sha256_file(folder / n) for n in _files(folder)}
    argv = [a.format(folder=folder, out=tmp_path / "hf") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "needs the float32 reference weights" in err and "--keep-reference" in err
    assert {n: sha256_file(folder / n) for n in _files(folder)} == before
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow  # a third export (~30 s here); the quantized case below covers the refusal
def test_target_trt_float_folder_refuses_onnxruntime_by_name(exported, tmp_path, capsys):
    config = exported["slim"].parent / "micro.json"
    out = tmp_path / "trt"
    assert main(["export", "--config", str(config), "--target", "trt", "--out", str(out)]) == 0
    _, raw = read_config(out)
    assert raw["graphs"] == {"trt": ONNX_FILE} and raw["export"]["target"] == "trt"
    with pytest.raises(ScredgeError, match="no graph for the ort backend"):
        Engine.load(out, backend="ort")
    assert main(["generate", str(out), "--prompt", "hi"]) == 2
    assert "--target trt" in capsys.readouterr().err


def test_unknown_target_is_refused():
    from scredge.export.pipeline import check_target

    with pytest.raises(ScredgeError, match="unknown export target"):
        check_target("gpu")


@pytest.mark.parametrize("target", ["ort", "trt"])
def test_quantized_target_writes_one_form(tiny_opset21, tmp_path, target):
    """A quantized folder for one backend holds that backend's form only (SCR_SPEC section
    4: "only the graphs of the backends it targets"), checked against the quantized tier."""
    from scredge.export import pipeline
    from scredge.export.quantize import QuantSpec

    model, proto = tiny_opset21

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "export_graph", export_graph_stand_in(proto))
        folder = pipeline.export_artifact(model, tmp_path / target, quantize=QuantSpec(8),
                                          keep_reference=False, target=target)
    form = ONNX_FILE if target == "ort" else TRT_ONNX_FILE
    # the form's weights lie in its own data file (export/quant_store.py)
    assert _files(folder) == sorted(["config.json", "manifest.json", form, form + ".data",
                                     HELDOUT_FILE])
    _, raw = read_config(folder)
    assert raw["graphs"] == {target: form}
    assert set(raw["quantization"]["graphs"]) == {target}
    other = "trt" if target == "ort" else "ort"
    with pytest.raises(ScredgeError, match=f"no graph for the {other} backend"):
        open_artifact(folder).graph_file(other)  # what the runtime and the builder read
    if target == "ort":
        assert Engine.load(folder, device="cpu").generate([1, 2, 3], max_new_tokens=2).ids
    else:
        with pytest.raises(ScredgeError, match="no graph for the ort backend"):
            Engine.load(folder, backend="ort")
