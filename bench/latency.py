"""`scredge bench`: latency statistics of real generation, torch-free.

Every figure comes from raw per-call samples (kept in the JSON), medians and percentiles
computed from them. Sampling and detokenisation are inside the timed region, as a user's
loop pays for them (llama-bench leaves them out).
"""

from __future__ import annotations

import platform
import resource
import statistics
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from scredge.destination import atomic_write
from scredge.device import cuda_device_count
from scredge.runtime.generation import Generator
from scredge.runtime.tokenizer import StreamDecoder
from scredge.sampling import GREEDY


def percentiles(samples: list[float], qs=(50, 90, 99)) -> dict[str, float]:
    """Linear-interpolated percentiles of the raw samples (NumPy's default method)."""
    arr = np.asarray(samples, dtype=np.float64)
    return {f"p{q}": float(np.percentile(arr, q)) for q in qs}


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    libs = {}
    for dist in ("numpy", "onnxruntime", "onnxruntime-gpu", "tensorrt", "torch"):
        try:
            libs[dist] = version(dist)
        except PackageNotFoundError:
            continue
    import os

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": platform.platform(), "gpus": cuda_device_count(), "libraries": libs}


def gpu_memory_used_mib() -> list[float] | None:
    """Per-GPU memory in use (nvidia-smi), None without a GPU."""
    if not cuda_device_count():
        return None
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [float(x) for x in out.split()]


def peak_rss_mib() -> float:
    """Peak resident memory of this process. VmHWM, not ru_maxrss: Linux carries ru_maxrss
    over fork + exec, so a child started by a large parent would report the parent's."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# A "stepper" runs one generation: prefill(ids [B,T]) then next() -> ids [B] per token.
StepperFactory = Callable[[], tuple[Callable[[np.ndarray], None], Callable[[], np.ndarray]]]


def runtime_stepper(runner) -> StepperFactory:
    """Generations as Engine.generate runs them: each one's decoder goes back to the runner
    when the next one starts (and at `make.close()`), so later ones reuse its buffers."""
    last: list[Generator] = []

    def close() -> None:
        if last:
            last.pop().close()

    def make():
        close()
        gen = Generator(runner, GREEDY)
        last.append(gen)
        return gen.append, gen.next_token
    make.close = close
    return make


def measure(make: StepperFactory, prompt_len: int, gen_len: int, batch: int, warmup: int,
            repeat: int, vocab_size: int = 256, seed: int = 0) -> dict:
    """Run warmup + repeat generations; return the statistics and the raw samples."""
    rng = np.random.default_rng(seed)
    ttft, prefill, itl = [], [], []
    for r in range(warmup + repeat):
        ids = rng.integers(0, vocab_size, size=(batch, prompt_len), dtype=np.int64)
        append, next_token = make()
        # detokenizing is part of a byte model's per-token cost; a larger vocabulary's
        # tokenizer lives in the artifact, which a runner does not know, so it is left out
        detok = [StreamDecoder() for _ in range(batch)] if vocab_size == 256 else None
        t0 = time.perf_counter()
        append(ids)
        t1 = time.perf_counter()
        _detokenize(detok, next_token())
        t2 = time.perf_counter()
        steps = []
        for _ in range(gen_len - 1):
            s = time.perf_counter()
            _detokenize(detok, next_token())
            steps.append(time.perf_counter() - s)
        if r >= warmup:
            prefill.append(t1 - t0)
            ttft.append(t2 - t0)
            itl.extend(steps)
    med_itl = statistics.median(itl) if itl else float("nan")
    return {
        "ttft_s": statistics.median(ttft),
        "prefill_tokens_per_s": batch * prompt_len / statistics.median(prefill),
        "itl_s": percentiles(itl) if itl else {},
        "decode_tokens_per_s": batch / med_itl if itl else float("nan"),
        "samples": {"ttft_s": ttft, "prefill_s": prefill, "itl_s": itl},
    }


def _detokenize(detok: list[StreamDecoder] | None, ids: np.ndarray) -> None:
    if detok is not None:
        for b, t in enumerate(ids):
            detok[b].push(int(t))


def bench(runner, *, prompt_len: int = 128, gen_len: int = 128, batch: int = 1,
          warmup: int = 1, repeat: int = 3) -> dict:
    stepper = runtime_stepper(runner)
    result = measure(stepper, prompt_len, gen_len, batch, warmup, repeat,
                     runner.config.vocab_size)
    stepper.close()  # before the next measurement, which should not share the GPU with it
    return {"backend": runner.backend, "settings": {
        "prompt_len": prompt_len, "gen_len": gen_len, "batch": batch, "warmup": warmup,
        "repeat": repeat}, **result,
        "cuda_graph": runner.cuda_graph_status(),
        "peak_rss_mib": peak_rss_mib(),
        "gpu_memory_used_mib": gpu_memory_used_mib(), "machine": machine_info()}


def torch_stepper(model) -> StepperFactory:
    """`scr_ref`'s own loop (KV cache, same NumPy sampler) as a stepper, for --compare torch."""
    from scredge.ref import decode_step, prefill
    from scredge.sampling import Sampler

    def make():
        import torch

        sampler, st = Sampler(GREEDY), {}

        def append(ids):
            st["logits"], st["state"] = prefill(model, torch.from_numpy(ids))
            st["pos"] = ids.shape[1]

        def next_token():
            if "tok" in st:
                st["logits"], st["state"] = decode_step(model, st["tok"], st["pos"], st["state"])
                st["pos"] += 1
            st["tok"] = torch.from_numpy(sampler(st["logits"].numpy()))
            return st["tok"].numpy()

        return append, next_token
    return make


def summary_lines(r: dict) -> list[str]:
    itl = r["itl_s"]
    return [
        f"backend {r['backend']}: prompt {r['settings']['prompt_len']}, generate "
        f"{r['settings']['gen_len']}, batch {r['settings']['batch']}, "
        f"{r['settings']['repeat']} repeats",
        f"  TTFT {r['ttft_s'] * 1e3:8.2f} ms   prefill {r['prefill_tokens_per_s']:10.0f} tok/s",
        f"  ITL p50 {itl.get('p50', float('nan')) * 1e3:.3f} ms  p90 "
        f"{itl.get('p90', float('nan')) * 1e3:.3f} ms  p99 {itl.get('p99', float('nan')) * 1e3:.3f}"
        f" ms   decode {r['decode_tokens_per_s']:8.1f} tok/s",
        f"  peak RSS {r['peak_rss_mib']:.0f} MiB   {r['machine']['cpu']} "
        f"({r['machine']['cores']} cores), GPUs {r['machine']['gpus']}",
    ]


def sweep(runner, contexts: list[int], gen_len: int = 32, repeat: int = 3) -> list[dict]:
    """TTFT and inter-token latency at each context (prompt) length."""
    rows = []
    for ctx in contexts:
        r = measure(runtime_stepper(runner), ctx, gen_len, 1, 1, repeat,
                    runner.config.vocab_size)
        rows.append({"context": ctx, "ttft_s": r["ttft_s"], "itl_p50_s": r["itl_s"]["p50"],
                     "itl_p90_s": r["itl_s"]["p90"]})
    return rows


def plot_sweep(rows: list[dict], path) -> None:
    """Latency against context, written atomically (no half-written PNG)."""

    from scredge.deps import require

    require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctx = [r["context"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].plot(ctx, [r["ttft_s"] * 1e3 for r in rows], "o-")
    ax[0].set(ylabel="TTFT (ms)", ylim=(0, None))
    ax[1].plot(ctx, [r["itl_p50_s"] * 1e3 for r in rows], "o-", label="p50")
    ax[1].plot(ctx, [r["itl_p90_s"] * 1e3 for r in rows], "s--", label="p90")
    ax[1].set(ylabel="inter-token latency (ms)", ylim=(0, None))
    ax[1].legend()
    for a in ax:
        a.set_xscale("log", base=2)
        a.set_xticks(ctx, [str(c) for c in ctx])
        a.minorticks_off()
        a.set_xlabel("context (prompt tokens)")
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    finally:
        plt.close(fig)
