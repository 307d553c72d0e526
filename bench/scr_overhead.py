"""The SCR overhead figure: the same weights with and without SCR layers
(`scr_layers = []`, every other tensor identical), each benchmarked in its own process so
peak memory is that model's alone. Needs torch to export the SCR-free twin."""

from __future__ import annotations

import multiprocessing
import tempfile
from pathlib import Path

from scredge.deps import require
from scredge.errors import ScredgeError


def twin_without_scr(folder: Path, out: Path) -> Path:
    """Export the artifact in `folder` again to `out` with `scr_layers = []`: every other
    tensor identical."""
    require("torch")
    from scredge.artifact import verified_reference_weights
    from scredge.export.pipeline import export_artifact
    from scredge.ref import load_checkpoint
    from scredge.ref.model import SCRForCausalLM
    from scredge.runtime.loaders import load_ort, open_artifact

    artifact = open_artifact(folder)
    load_ort(artifact, device="cpu")  # config.json checked against the graph first
    with verified_reference_weights(folder, artifact.manifest, "bench --scr-overhead") as path:
        model = load_checkpoint(path, artifact.config)  # the bytes the manifest lists
    plain = SCRForCausalLM(artifact.config.with_(scr_layers=()))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if ".scr." not in k})
    return export_artifact(plain.eval(), out, dtype=artifact.dtype,
                           quantize=twin_quantization(artifact.quantization, folder),
                           source={"kind": "scr-overhead twin", "of": str(folder)})


def twin_quantization(section: dict, folder: Path):
    """The QuantSpec that quantized `folder` (config.json's `quantization`), so the twin's
    matrices are quantized the same way (round-to-nearest and hqq are deterministic: the
    shared matrices come out identical); None for a float artifact."""
    from scredge.export.quantize import QuantSpec

    if not section:
        return None
    if section.get("method") not in ("rtn", "hqq"):
        raise ScredgeError("the SCR-free twin cannot repeat this quantization",
                           received=f"{folder}: method {section.get('method')}",
                           expected="an artifact quantized with rtn or hqq",
                           fix="measure the SCR overhead on an rtn export of the same model "
                               "(the calibration text of gptq is not stored in the artifact)")
    return QuantSpec(int(section["bits"]), int(section["block_size"]), section["method"])


def _bench_folder(folder: str, settings: dict) -> dict:
    """Runs in a fresh process: only this artifact's memory counts in its peak RSS."""
    from scredge.bench.report import run_bench

    return run_bench(folder, **settings)[0]


def _bench_in_child(folder: Path, settings: dict) -> dict:
    # spawn, not fork: a forked child would inherit the parent's pages (torch, the twin's
    # export) and its peak RSS with them
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_bench_folder, (str(folder), settings))


def scr_overhead(folder: str | Path, *, device: str = "auto", threads: int | None = None,
                 prompt_len: int = 128, gen_len: int = 128, batch: int = 1, warmup: int = 1,
                 repeat: int = 3) -> dict:
    from scredge.bench.report import check_settings

    check_settings(prompt_len=prompt_len, gen_len=gen_len, batch=batch, repeat=repeat)
    settings = dict(device=device, threads=threads, prompt_len=prompt_len, gen_len=gen_len,
                    batch=batch, warmup=warmup, repeat=repeat)
    with tempfile.TemporaryDirectory(prefix="scredge-noscr-") as tmp:
        twin = twin_without_scr(Path(folder), Path(tmp) / "no-scr")
        with_scr = _bench_in_child(Path(folder), settings)
        without = _bench_in_child(twin, settings)
    ratio = {
        "decode_latency": without["decode_tokens_per_s"] / with_scr["decode_tokens_per_s"],
        "ttft": with_scr["ttft_s"] / without["ttft_s"],
        "peak_rss": with_scr["peak_rss_mib"] / without["peak_rss_mib"],
    }
    lines = [
        "SCR overhead (same weights, scr_layers = [] for the baseline, separate processes):",
        f"  decode  {with_scr['decode_tokens_per_s']:8.1f} tok/s with SCR, "
        f"{without['decode_tokens_per_s']:8.1f} without -> latency x{ratio['decode_latency']:.3f}",
        f"  TTFT    {with_scr['ttft_s'] * 1e3:8.2f} ms with SCR, {without['ttft_s'] * 1e3:8.2f} ms "
        f"without -> x{ratio['ttft']:.3f}",
        f"  peak RSS {with_scr['peak_rss_mib']:7.1f} MiB with SCR, {without['peak_rss_mib']:7.1f}"
        f" MiB without -> x{ratio['peak_rss']:.3f}",
    ]
    return {"with_scr": with_scr, "without_scr": without, "ratios": ratio, "lines": lines}
