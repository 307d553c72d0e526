"""The artifact folder (SCR_SPEC section 4) and its refusals. Oracles: the manifest's own
hashes recomputed here, and the file system: a failed export must leave nothing behind."""

from __future__ import annotations

import hashlib
import json

import pytest

import scredge.export.pipeline as pipeline
from scredge.artifact import verify_manifest
from scredge.config import SCRConfig
from scredge.errors import ScredgeError
from scredge.export.pipeline import export_artifact
from scredge.ref import build_model, load_checkpoint

CFG = SCRConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                window=8, scr_layers=(1,))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    model = build_model(CFG, seed=5)
    out = tmp_path_factory.mktemp("art") / "tiny"
    export_artifact(model, out, source={"kind": "test"})
    return model, out


def test_folder_contents_and_manifest(artifact):
    """The default export (SCR_SPEC v3 section 3): the onnxruntime graph in the shared
    cache form (model.onnx), TensorRT's in the concat form (model.trt.onnx)."""
    model, out = artifact
    graphs = ["model.onnx", "model.trt.onnx"]
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "manifest.json", "model.onnx", "model.safetensors", "model.trt.onnx"]
    manifest = json.loads((out / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        data = (out / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
    assert set(manifest["files"]) == {"config.json", *graphs, "model.safetensors"}
    verify_manifest(out)
    config = json.loads((out / "config.json").read_text())
    assert SCRConfig.from_dict(config["model"]) == CFG
    assert config["export"]["dtype"] == "float32" and config["export"]["opset"] == 18
    assert config["io"]["inputs"][:4] == ["input_ids", "position_ids", "attention_mask",
                                          "past_key_values.0.key"]
    assert config["graph_version"] == 3
    assert config["cache"] == {"ort": "shared", "trt": "concat"}
    assert config["graphs"] == {"ort": "model.onnx", "trt": "model.trt.onnx"}
    assert {"torch", "onnx", "onnxruntime", "scredge"} <= set(config["versions"])
    assert "prefill" in config["export"]["verification"]
    # the weights the graph came from, loadable as the reference
    again = load_checkpoint(out / "model.safetensors")
    assert all((a == b).all() for a, b in zip(again.state_dict().values(),
                                              model.state_dict().values()))


def test_concat_folder_stays_graph_version_2(tmp_path):
    """--cache concat: one graph for both backends, no v3 key, graph_version 2 (SCR_SPEC
    section 3: version 3 only where a v3 feature is used)."""
    out = export_artifact(build_model(CFG, seed=5), tmp_path / "cat", cache="concat")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "manifest.json", "model.onnx", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["graph_version"] == 2 and "cache" not in config and "graphs" in config
    assert config["graphs"] == {"ort": "model.onnx", "trt": "model.onnx"}


def test_manifest_catches_tampering(artifact, tmp_path):
    import shutil

    _, out = artifact
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with open(copy / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ScredgeError, match=r"'model.onnx' does not match(.|\n)*--force"):
        verify_manifest(copy)
    (copy / "model.safetensors").unlink()
    with pytest.raises(ScredgeError, match="'model.safetensors' is missing"):
        verify_manifest(copy)


def test_existing_folder_needs_force(artifact):
    model, out = artifact
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(ScredgeError, match=r"already exists(.|\n)*--force"):
        export_artifact(model, out)
    assert (out / "manifest.json").read_bytes() == before


def _no_leftovers(parent):
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_failed_verification_writes_nothing(tmp_path, monkeypatch):
    """A real defect: one weight of the exported copy is perturbed, as a bad rewrite would."""
    real_cast = pipeline.cast_for_export

    def faulty(model, dtype):
        m = real_cast(model, dtype)
        m.model.layers[1].mlp.down_proj.weight.data.mul_(1.5)
        return m

    monkeypatch.setattr(pipeline, "cast_for_export", faulty)
    out = tmp_path / "bad"
    with pytest.raises(ScredgeError, match=r"verification failed(.|\n)*KL"):
        export_artifact(build_model(CFG, seed=6), out)
    assert not out.exists() and not _no_leftovers(tmp_path)


def test_failed_forced_export_keeps_the_old_folder(artifact, tmp_path, monkeypatch):
    import shutil

    model, src = artifact
    out = tmp_path / "kept"
    shutil.copytree(src, out)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "verify_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_artifact(model, out, force=True)
    verify_manifest(out)  # untouched
    assert not _no_leftovers(tmp_path)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"dtype": "bfloat16"}, "unknown export dtype"),
    ({"opset": 16}, "unsupported ONNX opset"),
])
def test_bad_options_write_nothing(tmp_path, kwargs, needle):
    out = tmp_path / "x"
    with pytest.raises(ScredgeError, match=needle):
        export_artifact(build_model(CFG), out, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_bad_paths(tmp_path):
    model = build_model(CFG)
    with pytest.raises(ScredgeError, match="parent folder does not exist"):
        export_artifact(model, tmp_path / "missing" / "x")
    (tmp_path / "file").write_text("")
    with pytest.raises(ScredgeError, match="not a folder"):
        export_artifact(model, tmp_path / "file", force=True)
    with pytest.raises(ScredgeError, match="cannot create"):
        export_artifact(model, "/proc/scredge-artifact")  # not writable, even for root


def test_tiny_window_refused(tmp_path):
    with pytest.raises(ScredgeError, match="window too small"):
        export_artifact(build_model(CFG.with_(window=2)), tmp_path / "w2")
    assert list(tmp_path.iterdir()) == []


def test_an_older_graph_is_refused_with_the_reexport_command(artifact, tmp_path):
    """Oracle: SCR_SPEC section 3: a runtime refuses graph_version < 2 (a v1 folder has
    none) with a message saying to export it again; nothing is loaded."""
    import shutil

    from scredge.artifact import write_manifest
    from scredge.runtime import Engine

    _, out = artifact
    for found, needle in ((None, "graph version 1 is older"), (1, "graph version 1 is older"),
                          (4, "graph version 4 is not")):  # 3 is valid: SCR_SPEC v3
        old = tmp_path / f"v{found}"
        shutil.copytree(out, old)
        config = json.loads((old / "config.json").read_text())
        config.pop("graph_version")
        if found is not None:
            config["graph_version"] = found
        (old / "config.json").write_text(json.dumps(config))
        write_manifest(old)
        with pytest.raises(ScredgeError, match=needle) as err:
            Engine.load(old)
        if found != 4:
            assert (f"scredge export --weights {old / 'model.safetensors'} --dtype float32 "
                    f"--opset 18 --out {old} --force") in str(err.value)
