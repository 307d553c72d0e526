"""`scredge export-triton`: the repository it writes, and its generated model.py loaded and
called as Triton's Python backend would, with stand-ins for `triton_python_backend_utils`,
the requests and their response senders (Triton itself, a container, is not run here).
Oracles: `Engine.generate` on each request alone, the config.pbtxt text, the copy's
manifest check, and the refusals' ScredgeError fields (nothing written)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import threading
import types

import numpy as np
import pytest
from serving import MODEL, reference

from scredge.cli import main
from scredge.errors import ScredgeError
from scredge.serve.triton_export import export_triton

FINAL = 1  # the stand-in's TRITONSERVER_RESPONSE_COMPLETE_FINAL


def fake_pb_utils() -> types.ModuleType:
    """The parts of Triton's `triton_python_backend_utils` the model uses."""
    pb = types.ModuleType("triton_python_backend_utils")
    pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, np.asarray(array)

        def as_numpy(self):
            return self.array

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.outputs = {t.name: t.array for t in output_tensors}
            self.error = error

    class TritonError:
        def __init__(self, message):
            self.message = message

        def __repr__(self):
            return f"TritonError({self.message!r})"

    pb.Tensor, pb.InferenceResponse, pb.TritonError = Tensor, InferenceResponse, TritonError
    pb.get_input_tensor_by_name = lambda request, name: request.inputs.get(name)
    pb.using_decoupled_model_transaction_policy = \
        lambda config: config["model_transaction_policy"]["decoupled"]
    return pb


class Sender:
    """A response sender: records each response and flag; `done` once the final one."""

    def __init__(self):
        self.responses, self.done = [], threading.Event()

    def send(self, response=None, flags=0):
        self.responses.append(response)
        if flags == FINAL:
            self.done.set()


class Request:
    def __init__(self, pb, **inputs):
        dtypes = {str: np.object_, bool: np.bool_, int: np.int64, float: np.float32}
        self.inputs = {k: pb.Tensor(k, np.array(
            [v.encode() if isinstance(v, str) else v], dtype=dtypes[type(v)]))
            for k, v in inputs.items()}
        self.sender = Sender()

    def get_response_sender(self):
        return self.sender


def model_config(pbtxt: str) -> dict:
    """What Triton hands `initialize` as args['model_config'] (JSON), from the text."""
    return {"name": re.search(r'^name: "(.+)"', pbtxt, re.M).group(1),
            "model_transaction_policy": {"decoupled": "decoupled: true" in pbtxt},
            "parameters": {k: {"string_value": v} for k, v in re.findall(
                r'parameters \{ key: "(\w+)" value: \{ string_value: "(.*)" \} \}', pbtxt)}}


@pytest.fixture(scope="module")
def repo(served_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton") / "repo"
    model_dir = export_triton(served_folder, out, model_name=MODEL, max_batch=4, max_queue=8,
                              backend="ort", device="cpu")
    return model_dir


def test_repository_layout(repo, served_folder):
    pbtxt = (repo / "config.pbtxt").read_text()
    assert 'backend: "python"' in pbtxt and "decoupled: true" in pbtxt
    assert 'name: "text_input" data_type: TYPE_STRING' in pbtxt
    assert "kind: KIND_CPU" in pbtxt and model_config(pbtxt)["parameters"]["max_batch"] == \
        {"string_value": "4"}
    from scredge.artifact import verify_manifest

    copied = verify_manifest(repo / "1" / "artifact")
    assert copied == verify_manifest(served_folder)


def test_model_py_serves_like_engine_generate(repo, engine, monkeypatch):
    pb = fake_pb_utils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    spec = importlib.util.spec_from_file_location("triton_model_py", repo / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(model_config(
        (repo / "config.pbtxt").read_text())), "model_name": MODEL, "model_version": "1"})
    try:
        streamed = Request(pb, text_input="Once upon", max_tokens=30, seed=4,
                           temperature=0.8, stream=True)
        whole = Request(pb, text_input="tea", max_tokens=25, seed=7, top_k=20,
                        stop="e")
        refused = Request(pb, text_input="x", temperature=-1.0)
        model.execute([streamed, whole, refused])
        for r in (streamed, whole, refused):
            assert r.sender.done.wait(60)
    finally:
        model.finalize()
    pieces = [x.outputs["text_output"][0].decode() for x in streamed.sender.responses]
    ref = reference(engine, "Once upon", 30, seed=4, temperature=0.8)
    assert len(pieces) > 2 and "".join(pieces) == ref.text
    assert streamed.sender.responses[-1].outputs["finish_reason"][0].decode() == \
        ref.finish_reason
    ref = reference(engine, "tea", 25, seed=7, extra_body={"top_k": 20}, stop=["e"])
    (one,) = whole.sender.responses
    assert one.error is None, one.error.message
    assert one.outputs["text_output"][0].decode() == ref.text
    assert one.outputs["finish_reason"][0].decode() == ref.finish_reason
    (bad,) = refused.sender.responses
    assert bad.error is not None and bad.error.message.startswith("400")


def test_refusals_write_nothing(served_folder, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    assert main(["export-triton", str(served_folder), str(tmp_path / "full")]) == 2
    assert "OUT is not empty" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["mine.txt"]
    assert main(["export-triton", str(tmp_path), str(tmp_path / "new")]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert main(["export-triton", str(served_folder), str(tmp_path / "new"),
                 "--instances", "0"]) == 2
    assert "invalid Triton model settings" in capsys.readouterr().err
    with pytest.raises(ScredgeError, match="invalid Triton model name"):
        export_triton(served_folder, tmp_path / "new", model_name="../x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no partial folder left
    assert main(["export-triton", str(served_folder), str(tmp_path / "new")]) == 0
    assert (tmp_path / "new" / served_folder.name / "1" / "model.py").is_file()
