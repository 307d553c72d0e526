"""The runtime's refusals: clear ScredgeErrors, nothing generated, no files written."""

from __future__ import annotations

import json
import shutil

import pytest

from scredge.cli import main
from scredge.errors import ScredgeError
from scredge.runtime import Engine


@pytest.fixture(scope="module")
def engine(small_window_artifact):
    return Engine.load(small_window_artifact[1])


@pytest.mark.parametrize(("prompt", "kwargs", "needle"), [
    ([1, 256, 3], {}, r"outside the vocabulary(.|\n)*id 256 at row 0, position 1"),
    ([-1], {}, "outside the vocabulary"),
    ("", {}, "empty prompt"),
    ([], {}, "empty prompt"),
    # prompts of unequal length are a valid batch now (SCR_SPEC v2 attention_mask); what
    # stays wrong in one is an empty row, a bad id in a row, or seeds not one per prompt
    ([[1, 2], []], {}, "empty prompt"),
    ([[1, 2], [3, 300, 4]], {}, r"outside the vocabulary"),
    ([[1, 2], [3]], {"seed": [1]}, "one per prompt"),
    ([1.5, 2], {}, "must be integers"),
    ([1], {"max_new_tokens": -1}, "invalid max_new_tokens"),
    ([1], {"max_new_tokens": 10**12}, "invalid max_new_tokens"),
    ([1], {"max_new_tokens": 2.0}, "invalid max_new_tokens"),
    ([1], {"top_p": 0.0}, "top_p"),
    ([1], {"top_p": 1.5}, "top_p"),
    ([1], {"temperature": -0.1}, "temperature"),
])
def test_bad_generation_requests(engine, prompt, kwargs, needle):
    with pytest.raises(ScredgeError, match=needle):
        engine.generate(prompt, **{"max_new_tokens": 4, **kwargs})


def test_not_an_artifact(tmp_path):
    with pytest.raises(ScredgeError, match="artifact folder not found"):
        Engine.load(tmp_path / "nope")
    with pytest.raises(ScredgeError, match="not an scredge artifact folder"):
        Engine.load(tmp_path)
    with pytest.raises(ScredgeError, match="unknown backend"):
        Engine.load(tmp_path, backend="tensorflow")


def test_tampered_or_incompatible_artifacts(small_window_artifact, tmp_path):
    copy = tmp_path / "a"
    shutil.copytree(small_window_artifact[1], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ScredgeError, match=r"incompatible scredge version(.|\n)*--force"):
        Engine.load(copy)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with open(copy / "model.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff")
    with pytest.raises(ScredgeError, match="'model.onnx' does not match manifest.json"):
        Engine.load(copy)


def test_missing_backend_names_the_extra(small_window_artifact, monkeypatch):
    import scredge.deps as deps

    real = deps.importlib.import_module

    def no_ort(name, *a):
        if name.startswith("onnxruntime"):
            raise ImportError(f"No module named '{name}'")
        return real(name, *a)

    monkeypatch.setattr(deps.importlib, "import_module", no_ort)
    with pytest.raises(ScredgeError, match=r"pip install 'scredge\[ort\]'"):
        Engine.load(small_window_artifact[1])


def test_trt_backend_without_an_engine(small_window_artifact):
    """A folder without a TensorRT engine: refused, naming the build command."""
    with pytest.raises(ScredgeError, match="no TensorRT engine") as err:
        Engine.load(small_window_artifact[1], backend="trt")
    assert "scredge build" in str(err.value)


def test_cli_generate(small_window_artifact, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = str(small_window_artifact[1])
    assert main(["generate", folder, "--prompt", "Hi", "--max-new-tokens", "5", "--greedy",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["ids"]) == 5 and out["backend"] == "ort" and "ttft_s" in out["timing"]
    assert Engine.load(folder).generate("Hi", 5, temperature=0).ids == out["ids"]
    assert main(["generate", folder, "--prompt", "Hi", "--max-new-tokens", "-3"]) == 2
    assert "invalid max_new_tokens" in capsys.readouterr().err
    assert main(["generate", folder, "--prompt", "Hi", "--top-p", "2"]) == 2
    assert "top_p" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cuda_refused_without_a_gpu(small_window_artifact):
    """Oracle: the driver probe; on a machine without a GPU asking for CUDA must fail."""
    from scredge.device import cuda_device_count

    if cuda_device_count():
        pytest.skip("a GPU is present; this test covers machines without one")
    with pytest.raises(ScredgeError, match="cannot run onnxruntime on CUDA"):
        Engine.load(small_window_artifact[1], device="cuda")


def test_cuda_graph_is_refused_on_onnxruntime(small_window_artifact, capsys):
    """--cuda-graph is the TensorRT runner's: asked of onnxruntime it is an error, not a
    silently ignored flag; 'auto' that lands on onnxruntime runs uncaptured."""
    folder = str(small_window_artifact[1])
    with pytest.raises(ScredgeError, match="TensorRT runner feature"):
        Engine.load(folder, backend="ort", cuda_graph=True)
    assert Engine.load(folder, backend="auto", device="cpu", cuda_graph=True).backend == "ort"
    for command in (["bench", folder, "--gen-len", "2"], ["parity", folder]):
        assert main([*command, "--cuda-graph"]) == 2
        err = capsys.readouterr().err
        assert "--cuda-graph is a TensorRT runner option" in err and "--backend trt" in err
    assert main(["generate", folder, "--prompt", "Hi", "--backend", "ort",
                 "--cuda-graph"]) == 2
    assert "TensorRT runner feature" in capsys.readouterr().err
