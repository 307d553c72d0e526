"""What is loaded is what was verified (issue 30, class 6): the graph, its external data,
config.json and the tokenizer files are read once, checked against manifest.json, and
those bytes are what onnxruntime / the tokenizer get. Oracles: a file swapped after the
folder was opened is refused (before: a zeroed-weights graph answered, exit 0); a graph
with external data runs from the verified bytes even when the file on disk is destroyed
after the read."""

from __future__ import annotations

import numpy as np
import pytest
from artifact_tools import copy_artifact
from onnx_graphs import external_matmul_artifact

from scredge.artifact import read_listed_bytes
from scredge.errors import ScredgeError
from scredge.runtime.loaders import load_ort, open_artifact, ort_session, verified_graph


@pytest.fixture
def art(small_window_artifact, tmp_path):
    return copy_artifact(small_window_artifact[1], tmp_path / "art")


def test_graph_swapped_after_open_is_refused(art, tiny_artifact):
    """A valid graph of another model put in place after open_artifact verified the
    folder: load_ort refuses it rather than running it."""
    artifact = open_artifact(art)
    (art / "model.onnx").write_bytes((tiny_artifact[1] / "model.onnx").read_bytes())
    with pytest.raises(ScredgeError, match="changed after the folder was opened"):
        load_ort(artifact, device="cpu")


def test_same_size_edit_after_open_is_refused(art):
    """Oracle: sha256 of the bytes read, not the size, decides."""
    artifact = open_artifact(art)
    data = bytearray((art / "model.onnx").read_bytes())
    data[-100] ^= 0xFF
    (art / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ScredgeError, match="changed after the folder was opened"):
        load_ort(artifact, device="cpu")


def test_tokenizer_config_swapped_after_open_is_refused(art):
    artifact = open_artifact(art)
    (art / "config.json").write_text("{}")
    with pytest.raises(ScredgeError, match="changed after the folder was opened"):
        read_listed_bytes(art, artifact.manifest, "config.json", "config")


def test_external_data_runs_from_the_verified_bytes(tmp_path):
    """A graph with its weights in NAME.data: the session is built from the bytes read
    and hashed; the data file overwritten on disk afterwards changes nothing. Oracle:
    NumPy's x @ W."""
    pytest.importorskip("onnx")
    artifact, w = external_matmul_artifact(tmp_path)
    files = artifact.manifest["files"]
    graph_bytes, external = verified_graph(artifact, "g.onnx")
    assert list(external) == ["g.onnx.data"]
    (tmp_path / "g.onnx.data").write_bytes(b"\0" * files["g.onnx.data"]["bytes"])
    session = ort_session(graph_bytes, "cpu", external_data=external,
                          external_folder=tmp_path)
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x @ w)


def test_engine_still_loads_an_untouched_folder(art):
    """Oracle: the unchanged folder loads and runs (the verified path is the normal one)."""
    runner = load_ort(open_artifact(art), device="cpu")
    assert runner.config.vocab_size > 0
