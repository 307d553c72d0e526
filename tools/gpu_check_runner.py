"""The TensorRT runner's device-memory path on a real GPU, with the engine emulated by ORT.

The GPU machine we are lent has no TensorRT, so this cannot run a TensorRT engine. What it
can check for real is everything the runner itself does on the device: cudaMalloc'd
state buffers, async uploads and downloads on its own stream, the two state sets that
swap every call, the zeroed SCR carry, the addresses bound per phase. The "engine" here
is a stand-in whose `execute_async_v3` reads every bound input back from device memory,
runs the artifact's own ONNX graph with onnxruntime on the host, and writes every output
to the bound device address. If the runner bound a wrong address, a stale state set or a
wrong shape, the tokens diverge from the plain onnxruntime runner's.

Oracle: greedy ids and per-step logits of `Engine.load(folder, backend="ort")` on the same
artifact (same graph, host state), which CI already checks against `scr_ref`.

    python tools/gpu_check_runner.py ARTIFACT [ARTIFACT ...] [--tokens 96] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

LOGITS_TOL = 1e-4


class OrtBackedContext:
    """An execution context that computes with onnxruntime from device-resident tensors."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.profiles: list[int] = []

    def set_optimization_profile_async(self, profile, stream):
        self.profiles.append(profile)
        return True

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(int(d) for d in shape)
        return True

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream):
        cuda = self.engine.cuda
        if getattr(cuda, "is_capturing", lambda s: False)(stream):
            # the host-memory fake emulates stream capture: record this run with what is
            # bound now, for the graph's replays (real CUDA cannot capture host work: there
            # the sync below fails under capture and the runner falls back, uncaptured)
            shapes, addresses = dict(self.shapes), dict(self.addresses)
            cuda.record(stream, lambda: self._run(shapes, addresses, stream))
            return True
        return self._run(self.shapes, self.addresses, stream)

    def _run(self, shapes, addresses, stream):
        import numpy as np

        eng, cuda = self.engine, self.engine.cuda
        cuda.sync(stream)  # the runner's uploads on its stream land before we read them
        feed = {}
        for name, meta in eng.inputs.items():
            feed[name] = np.empty(shapes[name], meta.dtype)
            cuda.download(feed[name], addresses[name], stream)
        cuda.sync(stream)
        names = [o.name for o in eng.session.get_outputs()]
        for name, value in zip(names, eng.session.run(names, feed)):
            value = np.ascontiguousarray(value)
            cuda.upload(addresses[name], value, stream)
            eng.bytes_moved += value.nbytes
        cuda.sync(stream)
        eng.runs += 1
        return True


class OrtBackedEngine:
    def __init__(self, session, inputs, cuda) -> None:
        self.session, self.inputs, self.cuda = session, inputs, cuda
        self.runs, self.bytes_moved, self.contexts_created = 0, 0, 0

    def create_execution_context(self):
        self.contexts_created += 1
        return OrtBackedContext(self)


def check_artifact(folder: Path, tokens: int, cuda=None, cuda_graph: bool = False) -> dict:
    """Greedy generations (prompts shorter and longer than the window) and batch-2 decode
    logits of the device-memory runner against the host onnxruntime runner; with
    cuda_graph, the steady decode steps go through the runner's CUDA-graph path."""
    import numpy as np
    import onnxruntime as ort

    from scredge.runtime import trt_profiles as tp
    from scredge.runtime.engine import Engine
    from scredge.runtime.loaders import open_artifact, ort_session
    from scredge.runtime.runners.cuda_ops import CudaOps
    from scredge.runtime.runners.ort_runner import OrtRunner
    from scredge.runtime.runners.trt_graphs import CudaGraphMode
    from scredge.runtime.runners.trt_runner import TrtRunner

    artifact = open_artifact(folder)
    config = artifact.config
    cuda = cuda or CudaOps()
    # the graph TensorRT would build from (concat form; a shared folder's model.trt.onnx)
    graph = str(folder / artifact.graph_file("trt"))
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    limits = tp.Limits.from_profiles(tp.profiles(config, max_batch=2), config)
    mode = CudaGraphMode.CAPTURE if cuda_graph else CudaGraphMode.OFF
    runner = TrtRunner(None, config, artifact.kv_dtype, limits, cuda, cuda_graph=mode)
    runner.engine = OrtBackedEngine(session, runner.input_metadata, cuda)
    gpu_engine = Engine(runner, artifact)
    # the oracle: onnxruntime on the host running that same graph (same graph, same inputs)
    host_engine = Engine(OrtRunner(ort_session(Path(graph), "cpu"), config, artifact.kv_dtype),
                         artifact)

    rng = np.random.default_rng(0)
    report = {"artifact": str(folder), "dtype": artifact.dtype, "window": config.window,
              "cuda_graph": mode.value, "cases": []}
    # prompts shorter and longer than the window (the longer one fills the cache and trims)
    for length in (5, config.window + 9):
        prompt = rng.integers(0, config.vocab_size, size=length).tolist()
        t0 = time.perf_counter()
        got = gpu_engine.generate(prompt, tokens, temperature=0.0)
        gpu_s = time.perf_counter() - t0
        want = host_engine.generate(prompt, tokens, temperature=0.0)
        same = list(got.ids) == list(want.ids)
        report["cases"].append({"prompt_len": length, "new_tokens": tokens,
                                "greedy_ids_identical": same, "seconds": round(gpu_s, 2),
                                "cuda_graph_status": runner.cuda_graph_status()})
    # batch 2 and the state left on the device after a prefill and decode steps; twice, the
    # second time on the first decoder released and reset (its buffers hold the first
    # run's state: a carry not zeroed again, or a stale set, shows in the logits)
    device_states = []
    for key in ("batch2", "batch2_reused"):
        worst, state_err, same_names, past, state = _batch2(runner, host_engine.runner,
                                                            config, rng)
        report[f"{key}_logits_max_abs_diff"] = worst
        report[f"{key}_state_max_abs_diff"] = state_err
        report[f"{key}_state_tensors_compared"] = same_names
        report[f"{key}_past_len"] = past
        device_states.append(state)
        if key == "batch2":
            report["batch2_cuda_graph_status"] = runner.cuda_graph_status()
    report["decoders_reused"] = device_states[0] is device_states[1]
    # prompts of both lengths as one batch (SCR_SPEC section 3, v2): prefilled apart, joined
    # on the device through the attention mask; each row must equal its prompt alone. Last,
    # as it leaves decoder states of other batch sizes (and their graphs) in the pool
    prompts = [rng.integers(0, config.vocab_size, size=n).tolist()
               for n in (config.window + 3, 6)]
    mixed = gpu_engine.generate(prompts, tokens, temperature=0.0)
    report["mixed_batch_ids_identical"] = [r.ids for r in mixed] == [
        host_engine.generate(p, tokens, temperature=0.0).ids for p in prompts]
    report["engine_runs"] = runner.engine.runs
    # same graph, same inputs, same onnxruntime: only thread scheduling may differ
    report["ok"] = (all(c["greedy_ids_identical"] for c in report["cases"])
                    and report["mixed_batch_ids_identical"] and report["decoders_reused"]
                    and all(report[f"{k}_logits_max_abs_diff"] <= LOGITS_TOL
                            and report[f"{k}_state_max_abs_diff"] <= LOGITS_TOL
                            and report[f"{k}_state_tensors_compared"]
                            for k in ("batch2", "batch2_reused")))
    return report


def _batch2(runner, host_runner, config, rng):
    """Prefill 7 tokens and decode past the window on a 2-row decoder of each runner; the
    worst logits and final-state differences. The device decoder is released at the end."""
    import numpy as np

    from scredge.runtime.runners.base import HostDecoder

    prompt = rng.integers(0, config.vocab_size, size=(2, 7))
    dec_gpu, dec_host = runner.decoder(2), HostDecoder(host_runner, 2)
    positions = np.tile(np.arange(7), (2, 1))
    worst = float(np.abs(dec_gpu.step(prompt, positions) - dec_host.step(prompt, positions)).max())
    for step in range(config.window + 4):
        ids = rng.integers(0, config.vocab_size, size=(2, 1))
        pos = np.full((2, 1), 7 + step)
        worst = max(worst, float(np.abs(dec_gpu.step(ids, pos) - dec_host.step(ids, pos)).max()))
    state_gpu = dec_gpu.state()  # copied back from the set the next call would read
    past, device_state = dec_gpu.past, dec_gpu._state
    dec_gpu.release()
    state_host = dec_host.state
    state_err = max(float(np.abs(state_gpu[n].astype(np.float64) - state_host[n]).max())
                    for n in state_host)
    return worst, state_err, sorted(state_gpu) == sorted(state_host), past, device_state


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", type=Path, nargs="+")
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    import gpu_check_kernel  # beside this file, first on sys.path when run as a script

    gpu_check_kernel.load_scredge()  # maps the source folders if scredge is not installed
    reports = []
    for folder in args.artifacts:
        for cuda_graph in (False, True):  # the emulated engine cannot be captured on a GPU:
            # there the second pass checks the refused capture leaves a working decoder
            report = check_artifact(folder, args.tokens, cuda_graph=cuda_graph)
            reports.append(report)
            print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1))
    ok = all(r["ok"] for r in reports)
    print(f"TRT RUNNER DEVICE-MEMORY CHECK {'PASSED' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
