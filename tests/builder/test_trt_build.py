"""`scredge build --backend tensorrt_rtx` on the CPU: TensorRT for RTX's real parser and
builder, driven through Polygraphy, on the W = 16 micro artifact in float32 and float16.
Oracles: the manifest contract (SCR_SPEC section 4: every file hashed, the engine entry),
section 2 (one Realign plugin layer per SCR layer in plugin mode, none decomposed), and the
refusals' messages. Builds run in a child process, as the CLI does: Polygraphy binds its
TensorRT module (tensorrt vs tensorrt_rtx) once per process. Nothing here can deserialize
or run an engine (that needs a GPU)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from scredge.artifact import verify_manifest
from scredge.cli import main
from scredge.errors import ScredgeError
from scredge.export.pipeline import export_artifact
from scredge.runtime import Engine

trt = pytest.importorskip(
    "tensorrt_rtx", reason="TensorRT for RTX is not installed (pip install tensorrt-rtx-cu13)")
pytest.importorskip("polygraphy", reason="polygraphy is not installed")

ENGINE = f"model.trtrtx-{'.'.join(trt.__version__.split('.')[:3])}-portable.engine"
TAG = ENGINE[len("model."):-len(".engine")]


def build(folder, *extra, cache):
    cmd = [sys.executable, "-m", "scredge", "build", str(folder), "--backend", "tensorrt_rtx",
           "--max-prefill", "32", "--timing-cache", str(cache), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def built(small_window_artifact, tmp_path_factory):
    """{(dtype, mode): folder} after one build each; float16 is exported from the same model."""
    model, folder = small_window_artifact
    root = tmp_path_factory.mktemp("trt_build")
    sources = {"float32": shutil.copytree(folder, root / "src32"),
               "float16": export_artifact(model, root / "src16", dtype="float16")}
    out = {}
    for dtype, mode in (("float32", "plugin"), ("float16", "plugin"), ("float32", "decomposed")):
        target = shutil.copytree(sources[dtype], root / f"{dtype}-{mode}")
        flags = ["--no-plugin"] if mode == "decomposed" else []
        result = build(target, *flags, cache=root / "timing.cache")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Realign plugin layers" in result.stdout  # progress lines
        assert "  Building engine ..." in result.stdout  # the builder's own phases
        assert "  Building engine: done in" in result.stdout
        out[dtype, mode] = target
    return out


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_engine_file_and_manifest(built, dtype):
    folder = built[dtype, "plugin"]
    assert (folder / ENGINE).is_file() and not list(folder.glob(".*.partial"))
    manifest = verify_manifest(folder)  # the engine is hashed like every other file
    assert ENGINE in manifest["files"]
    entry = manifest["engines"][TAG]
    assert entry["file"] == ENGINE and entry["backend"] == "tensorrt_rtx"
    assert entry["tensorrt"] == trt.__version__ and entry["compute_capability"] is None
    assert entry["dtype"] == dtype and entry["plugin_mode"] == "plugin"
    assert entry["plugin_layers"] == 2
    assert entry["plugins"] == [{"name": "Realign", "namespace": "scr", "version": "1",
                                 "python": "scredge.plugins.realign.python_plugin"}]
    assert entry["max_batch"] == 4 and entry["max_prefill"] == 32
    prefill, decode = entry["profiles"]
    assert prefill["input_ids"] == [[1, 1], [1, 32], [4, 32]]
    assert decode["past_key_values.0.key"] == [[1, 2, 0, 8], [1, 2, 15, 8], [4, 2, 15, 8]]
    assert prefill["attention_mask"] == [[1, 1], [1, 32], [4, 32]]  # [B, P+T] in both
    assert decode["attention_mask"] == [[1, 1], [1, 16], [4, 16]]
    data = (folder / ENGINE).read_bytes()
    assert data.count(b"Realign") >= 2 and b"kappa" in data  # the plugin layers' fields


def test_no_plugin_engine(built):
    folder = built["float32", "decomposed"]
    entry = verify_manifest(folder)["engines"][TAG]
    assert entry["plugin_mode"] == "decomposed" and entry["plugins"] == []
    assert entry["plugin_layers"] == 0
    assert b"kappa" not in (folder / ENGINE).read_bytes()


def test_engine_is_refused_without_a_gpu(built):
    """No GPU here: 'trt' is refused with the reason; 'auto' falls back to onnxruntime."""
    folder = built["float32", "plugin"]
    with pytest.raises(ScredgeError, match="needs an NVIDIA GPU"):
        Engine.load(folder, backend="trt")
    assert Engine.load(folder).backend == "ort"


@pytest.mark.parametrize("args, match", [
    (["--backend", "tensorrt_rtx", "--max-context", "64"], "only for models with window = null"),
    (["--backend", "tensorrt_rtx", "--max-batch", "0"], "--max-batch must be"),
    (["--backend", "ort", "--no-plugin"], "are for TensorRT builds"),
    (["--backend", "tensorrt"], "TensorRT|GPU"),
])
def test_refusals_write_nothing(small_window_artifact, tmp_path, capsys, args, match):
    folder = shutil.copytree(small_window_artifact[1], tmp_path / "a")
    before = sorted(p.name for p in folder.iterdir())
    manifest = (folder / "manifest.json").read_text()
    assert main(["build", str(folder), *args]) == 2
    err = capsys.readouterr().err
    assert any(m in err for m in match.split("|")), err
    assert sorted(p.name for p in folder.iterdir()) == before
    assert (folder / "manifest.json").read_text() == manifest


def test_manifest_entry_is_json_clean(built):
    """The entry round-trips through JSON as written (no tuples or numpy scalars)."""
    text = (built["float16", "plugin"] / "manifest.json").read_text()
    assert json.loads(text)["engines"][TAG]["dtype"] == "float16"


OP_ENGINE = """
import sys
from pathlib import Path
from scredge.golden_file import Golden
from scredge.runtime.loaders import open_artifact
from scredge.builder.trt_build import import_trt
from scredge.parity.trt_op_tier import build_realign_engine, realign_profile
folder = Path(sys.argv[1])
artifact, golden = open_artifact(folder), Golden.load(folder / "parity" / "golden.npz")
assert realign_profile(golden, 32)["h"][2] == (2, 4096, 32)
engine = build_realign_engine(import_trt("tensorrt_rtx"), artifact, golden, "tensorrt_rtx", None)
assert len(engine) > 0 and b"Realign" in engine
print("ok")
"""


def test_one_node_realign_engine_for_the_op_tier(tmp_path, small_window_artifact):
    """Oracle: the parser and builder themselves: the artifact's Realign node alone must
    become exactly one plugin layer (build_model_bytes refuses otherwise) and build, with
    TensorRT for RTX and no GPU. Running it (the op tier of `parity --backend trt`) needs a
    GPU and is not covered here."""
    folder = shutil.copytree(small_window_artifact[1], tmp_path / "op")
    assert main(["parity", str(folder), "--record"]) == 0
    result = subprocess.run([sys.executable, "-c", OP_ENGINE, str(folder)], capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")


def test_plain_transformer_builds_without_a_plugin(tmp_path):
    """A plain transformer (scr_layers = [], what `--scr-layers none` exports) has no Realign
    node: the build hands its graph to the parser as it is. Oracle: TensorRT for RTX's own
    parser and builder (the build succeeds with zero plugin layers, as the manifest entry
    says) and the manifest contract (SCR_SPEC section 4)."""
    from conftest import WINDOWED

    from scredge.ref import build_model

    folder = export_artifact(build_model(WINDOWED.with_(scr_layers=()), seed=1, std=0.08),
                             tmp_path / "plain")
    result = build(folder, cache=tmp_path / "timing.cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 Realign plugin layers" in result.stdout
    entry = verify_manifest(folder)["engines"][TAG]
    assert entry["plugin_mode"] == "none" and entry["plugins"] == []
    assert entry["plugin_layers"] == 0
    assert (folder / ENGINE).stat().st_size > 0
