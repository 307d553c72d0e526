"""`scredge bench` as one call: time real generation through a runner and, on request,
the same engine without CUDA graphs, scr_ref's own loop, or a sweep of context lengths,
each as a ratio measured in the same run."""

from __future__ import annotations

from pathlib import Path

from scredge.artifact import reference_weights, verified_reference_weights
from scredge.bench import latency
from scredge.errors import ScredgeError
from scredge.runtime.engine import check_backend_options
from scredge.runtime.loaders import load_ort, open_artifact


def check_settings(**settings: int) -> None:
    """Counts that must be >= 1 (prompt_len, gen_len, batch, repeat)."""
    for name, value in settings.items():
        if value < 1:
            raise ScredgeError(f"--{name.replace('_', '-')} must be >= 1", received=value)


def run_bench(folder: str | Path, *, backend: str = "ort", device: str = "auto",
              threads: int | None = None, cuda_graph: bool = False, prompt_len: int = 128,
              gen_len: int = 128, batch: int = 1, warmup: int = 1, repeat: int = 3,
              compare_torch: bool = False, sweep: list[int] | None = None,
              plot: Path | None = None) -> tuple[dict, list[str]]:
    """(the JSON result, its summary lines)."""
    check_settings(prompt_len=prompt_len, gen_len=gen_len, batch=batch, repeat=repeat)
    check_backend_options(backend, cuda_graph)
    artifact = open_artifact(folder)
    if compare_torch:  # a slim folder is refused before the benchmark runs
        reference_weights(folder, artifact.manifest, "bench --compare torch")
    if backend == "trt":
        from scredge.runtime.trt_loader import load_trt_runner

        runner = load_trt_runner(artifact, cuda_graph=cuda_graph)
    else:
        runner = load_ort(artifact, device=device, threads=threads)
    settings = dict(gen_len=gen_len, batch=batch, warmup=warmup, repeat=repeat)
    result = latency.bench(runner, prompt_len=prompt_len, **settings)
    result["precision"] = artifact.precision
    # the file that ran (onnxruntime on CUDA may run a shared folder's concat graph)
    result["graph"] = getattr(runner, "graph", None) or artifact.graph_file(backend)
    lines = latency.summary_lines(result)
    lines[0] += f", {artifact.precision} ({result['graph']})"
    if cuda_graph:  # the same engine uncaptured, in this run: the ratio is the gain
        plain = latency.bench(runner.without_cuda_graph(), prompt_len=prompt_len, **settings)
        ratio = result["decode_tokens_per_s"] / plain["decode_tokens_per_s"]
        result["cuda_graph_compare"] = {"uncaptured": plain, "decode_ratio": ratio}
        lines.append(f"  CUDA graphs: {result['cuda_graph']}; decode {ratio:.2f}x the "
                     f"uncaptured engine ({plain['decode_tokens_per_s']:.1f} tok/s)")
    if compare_torch:
        from scredge.ref import load_checkpoint

        with verified_reference_weights(folder, artifact.manifest,
                                        "bench --compare torch") as path:
            model = load_checkpoint(path, artifact.config)  # the bytes the manifest lists
        ref = latency.measure(latency.torch_stepper(model), prompt_len,
                              vocab_size=artifact.config.vocab_size, **settings)
        ratios = {"decode_tokens_per_s": result["decode_tokens_per_s"]
                  / ref["decode_tokens_per_s"], "ttft": ref["ttft_s"] / result["ttft_s"]}
        result["compare"] = {"torch": ref, "ratios": ratios}
        lines.append(f"  vs scr_ref (torch, same process): decode "
                     f"{ratios['decode_tokens_per_s']:.2f}x, TTFT {ratios['ttft']:.2f}x faster "
                     f"(torch decode {ref['decode_tokens_per_s']:.1f} tok/s)")
    if sweep:
        result["sweep"] = latency.sweep(runner, sweep, gen_len=min(gen_len, 32), repeat=repeat)
        for row in result["sweep"]:
            lines.append(f"  context {row['context']:6d}: TTFT {row['ttft_s'] * 1e3:8.2f} ms,"
                         f" ITL p50 {row['itl_p50_s'] * 1e3:.3f} ms")
        if plot:
            latency.plot_sweep(result["sweep"], plot)
            lines.append(f"  plot: {plot}")
    return result, lines


def parse_sweep(text: str | None) -> list[int] | None:
    """--sweep L1,L2,...: context lengths."""
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ScredgeError("invalid --sweep", received=repr(text),
                           expected="comma-separated context lengths like 64,128,256") from None
