"""`scredge generate|bench --backend trt [--cuda-graph]` end to end on a CPU: the TensorRT
runner over host-memory fakes, with the engine emulated by onnxruntime over the runner's
buffers (tools/gpu_check_runner), standing in for `load_trt_runner`'s deserialized engine.
Oracle: the onnxruntime backend's greedy ids on the same artifact."""

from __future__ import annotations

import json

import pytest
from fake_cuda import FakeCuda
from scripts import load_script

from scredge.cli import main
from scredge.runtime import Engine


@pytest.fixture
def emulated_trt(monkeypatch):
    """The runners `load_trt_runner` returned, newest last."""
    tool = load_script("tools/gpu_check_runner.py")
    runners = []

    def load(artifact, cuda=None, cuda_graph=False):
        import onnxruntime as ort

        from scredge.runtime import trt_profiles as tp
        from scredge.runtime.runners.trt_graphs import CudaGraphMode
        from scredge.runtime.runners.trt_runner import TrtRunner

        config, fake = artifact.config, FakeCuda([])
        limits = tp.Limits.from_profiles(tp.profiles(config, max_batch=2), config)
        mode = CudaGraphMode.CAPTURE if cuda_graph else CudaGraphMode.OFF
        runner = TrtRunner(None, config, artifact.kv_dtype, limits, fake, cuda_graph=mode)
        session = ort.InferenceSession(str(artifact.folder / artifact.graph_file("trt")),
                                       providers=["CPUExecutionProvider"])
        runner.engine = tool.OrtBackedEngine(session, runner.input_metadata, fake)
        runners.append(runner)
        return runner

    import scredge.runtime.engine as engine_module
    import scredge.runtime.trt_loader as loader

    monkeypatch.setattr(loader, "load_trt_runner", load)
    monkeypatch.setattr(engine_module, "load_trt_runner", load)
    return runners


def test_generate_with_cuda_graphs_matches_onnxruntime(emulated_trt, small_window_artifact,
                                                       capsys):
    folder = str(small_window_artifact[1])
    argv = ["generate", folder, "--prompt", "Hello", "--max-new-tokens", "30", "--greedy",
            "--json", "--backend", "trt", "--cuda-graph"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backend"] == "trt"
    assert out["ids"] == Engine.load(folder, backend="ort").generate(
        "Hello", 30, temperature=0).ids
    # the steady steps really were replayed (a refused capture would give the same ids)
    assert emulated_trt[-1].cuda_graph_status().startswith("on: 2 graph(s) captured")


def test_bench_with_cuda_graphs_times_the_uncaptured_engine_too(emulated_trt,
                                                               small_window_artifact, capsys):
    folder = str(small_window_artifact[1])
    assert main(["bench", folder, "--backend", "trt", "--cuda-graph", "--json",
                 "--prompt-len", "16", "--gen-len", "12", "--warmup", "0",
                 "--repeat", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backend"] == "trt"
    # per generation: 12 tokens - 1 from the prefill - 2 warm-up calls = 9 launches
    assert out["cuda_graph"] == "on: 4 graph(s) captured, 18 launches"
    # the second generation reused the first's contexts (two with graphs: one per state
    # set), and the uncaptured baseline made one of its own
    assert emulated_trt[-1].engine.contexts_created == 3
    assert len(emulated_trt[-1]._idle) == 1  # the last generation was handed back too
    plain = out["cuda_graph_compare"]["uncaptured"]
    assert plain["cuda_graph"] == "off: not requested (--cuda-graph)"
    assert out["cuda_graph_compare"]["decode_ratio"] == pytest.approx(
        out["decode_tokens_per_s"] / plain["decode_tokens_per_s"])
