"""tools/gpu_check_runner.py: the TensorRT runner's device-memory path against the host
onnxruntime runner, with the engine emulated by onnxruntime over the runner's buffers.

On a CPU the "device" is the recording fake of test_trt_runner (bytearrays behind fake
pointers), which runs the tool's whole comparison in CI; with an NVIDIA GPU and
cuda-python the same check runs on real cudaMalloc'd memory. Oracle: greedy ids, batch-2
logits and the final state of `Engine.load(folder, backend="ort")` / `HostDecoder`.
"""

from __future__ import annotations

import pytest
from fake_cuda import FakeCuda
from scripts import load_script

from scredge.device import gpu_unavailable_reason


@pytest.fixture(scope="module")
def tool():
    return load_script("tools/gpu_check_runner.py")


def test_device_path_matches_the_host_runner_on_fake_memory(tool, small_window_artifact):
    _, folder = small_window_artifact
    report = tool.check_artifact(folder, tokens=24, cuda=FakeCuda([]))
    assert report["ok"], report
    assert [c["prompt_len"] for c in report["cases"]] == [5, 16 + 9]  # inside and past W
    assert report["batch2_past_len"] == 15  # W - 1: the cache was trimmed on the device
    assert report["mixed_batch_ids_identical"]  # prompts of 19 and 6 tokens, joined
    assert report["batch2_logits_max_abs_diff"] <= tool.LOGITS_TOL
    assert report["decoders_reused"] and report["batch2_reused_past_len"] == 15
    assert report["batch2_reused_logits_max_abs_diff"] <= tool.LOGITS_TOL


def test_cuda_graph_replays_match_the_host_runner_on_fake_memory(tool, small_window_artifact):
    """Steady decode steps replayed from captured graphs (the fake records the emulated
    engine's run at capture and reruns it per launch): same greedy ids and state."""
    _, folder = small_window_artifact
    report = tool.check_artifact(folder, tokens=24, cuda=FakeCuda([]), cuda_graph=True)
    assert report["ok"], report
    # prompt 5 + 24 tokens passes W-1 = 15, so both generations reach the steady shape; the
    # second reuses the first's decoder (context, buffers) and captures its two graphs anew
    assert [c["cuda_graph_status"].split(",")[0] for c in report["cases"]] == [
        "on: 2 graph(s) captured", "on: 4 graph(s) captured"]
    assert report["batch2_cuda_graph_status"].startswith("on: 2 graph(s) captured")


@pytest.mark.gpu
def test_device_path_on_a_real_gpu(tool, small_window_artifact):
    reason = gpu_unavailable_reason()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python drives the device memory")
    _, folder = small_window_artifact
    report = tool.check_artifact(folder, tokens=24)
    assert report["ok"], report
