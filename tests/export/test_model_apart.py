"""`scredge export` of a float artifact in two processes (export/model_apart.py). Oracles: the
folder is the one `export_artifact` writes in one process, file for file (manifest hashes);
the process that verified it never imported torch but did run onnxruntime; a failure or a
death of the model's process raises here and leaves no folder behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from scredge.contract import TRT_ONNX_FILE
from scredge.errors import ScredgeError
from scredge.export.model_apart import export_apart
from scredge.export.pipeline import export_artifact
from scredge.export.sources import select_source

CLI = """
import json, sys
from scredge.cli import main
assert "torch" not in sys.modules
rc = main(["export", "--preset", "tiny", "--dtype", sys.argv[2], "--out", sys.argv[1]])
print(json.dumps({"rc": rc, "torch": "torch" in sys.modules,
                  "onnxruntime": "onnxruntime" in sys.modules}))
"""


# float16 is slow (20 s): `make test` runs the CLI's default dtype through the same two
# halves; tests/export/test_cli_export.py runs a float16 CLI export
@pytest.mark.parametrize("dtype", ["float32", pytest.param("float16", marks=pytest.mark.slow)])
def test_cli_folder_is_export_artifacts_and_verified_without_torch(tmp_path, dtype):
    apart, whole = tmp_path / "apart", tmp_path / "whole"
    run = subprocess.run([sys.executable, "-c", CLI, str(apart), dtype], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == {"rc": 0, "torch": False, "onnxruntime": True}
    assert any("prefill:" in line and "PASS" in line for line in lines)  # its log came back

    src = select_source(preset="tiny")
    export_artifact(src.model, whole, dtype=dtype, source=src.description,
                    tokenizer=src.tokenizer, keep_reference=False)
    files = [json.loads((f / "manifest.json").read_text())["files"] for f in (apart, whole)]
    # the concat graph's nodes carry torch.onnx's debug metadata, which names functions by
    # their address (`<function sym_min at 0x7f...>`): it differs between any two
    # processes, with or without this module; the graphs are compared without it
    assert {k: v for k, v in files[0].items() if k != TRT_ONNX_FILE} == \
        {k: v for k, v in files[1].items() if k != TRT_ONNX_FILE}
    assert _without_node_metadata(apart) == _without_node_metadata(whole)


def _without_node_metadata(folder) -> bytes:
    import onnx

    proto = onnx.load(str(folder / TRT_ONNX_FILE), load_external_data=False)
    for node in proto.graph.node:
        del node.metadata_props[:]
    return proto.SerializeToString()


class Source:
    def __init__(self, model):
        self.model, self.description, self.tokenizer = model, {"kind": "test"}, None


def _leftovers(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


def test_a_refusal_in_the_model_process_is_raised_here(tmp_path):
    def load():
        raise ScredgeError("no such model", received="test", fix="none")

    with pytest.raises(ScredgeError, match="no such model"):
        export_apart(load, tmp_path / "out")
    assert _leftovers(tmp_path) == []


def test_a_model_process_that_dies_is_reported(tmp_path):
    def load():
        os._exit(9)  # as the out-of-memory killer would end it: no answer sent

    with pytest.raises(ScredgeError, match="ended without a result") as err:
        export_apart(load, tmp_path / "out")
    assert "exit code 9" in str(err.value)
    assert _leftovers(tmp_path) == []


def test_its_log_lines_reach_the_callers_log(tmp_path):
    seen: list[str] = []
    export_apart(lambda: select_source(preset="tiny"), tmp_path / "out", log=seen.append,
                 keep_reference=False)
    assert seen[0].startswith("exporting float32 graph")
    assert any(line.startswith("verifying with onnxruntime") for line in seen)
    assert (tmp_path / "out" / "manifest.json").is_file()


CYCLE = """
import gc, sys
import numpy as np, onnx, onnxruntime as ort
from onnx import TensorProto, helper
from scredge.export.model_apart import export_apart
from scredge.export.sources import select_source

x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "g", [x],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
opts = ort.SessionOptions()
opts.intra_op_num_threads = 2  # a thread pool: its condition variables are the hazard
session = ort.InferenceSession(helper.make_model(graph).SerializeToString(), opts,
                               providers=["CPUExecutionProvider"])
session.run(None, {"x": np.ones(4, np.float32)})
gc.disable()
holder = {"session": session}
holder["self"] = holder  # a cycle: only the collector frees it
del session, holder
export_apart(lambda: select_source(preset="tiny"), sys.argv[1], keep_reference=False)
print("ok")
"""


def test_a_session_left_in_a_cycle_by_the_caller_does_not_hang_the_child(tmp_path):
    """Oracle: the export ends. Without gc.freeze around the fork, the child's collection
    destroyed the caller's session and waited forever on its thread pool (seen in a test
    suite)."""
    run = subprocess.run([sys.executable, "-c", CYCLE, str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]
