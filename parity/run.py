"""`scredge parity` as one call: open the folder, get the reference (golden file, a fresh
recording, or scr_ref run live), run every tier the backend can run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from scredge.artifact import listed_member, read_listed_bytes
from scredge.contract import CACHE_SHARED, GOLDEN_FILE
from scredge.errors import ScredgeError
from scredge.golden_file import Golden
from scredge.parity.report import ParityReport
from scredge.quantized_tier import QuantizedReport
from scredge.runtime.loaders import load_ort, open_artifact, ort_graph, ort_kind
from scredge.tiers import Thresholds, tier_thresholds, with_overrides


def listed_golden(artifact) -> Path:
    """The golden file's path, only when the manifest lists it (so it was hash-checked on
    open and lies inside the folder); an unlisted one is never read."""
    path = listed_member(artifact.folder, artifact.manifest, GOLDEN_FILE, "golden reference")
    if path is None:
        raise ScredgeError("no golden reference in the artifact folder",
                           received=f"manifest.json does not list {GOLDEN_FILE}",
                           fix=f"record one where torch is installed: scredge parity "
                               f"{artifact.folder} --record")
    return path


def check(folder: str | Path, *, backend: str = "ort", device: str = "auto",
          record: bool = False, live: bool = False, dtype: str | None = None,
          overrides: dict[str, float | None] | None = None, cuda_graph: bool = False,
          dump: Path | None = None,
          log: Callable[[str], None] = lambda s: None) -> ParityReport | QuantizedReport:
    """Run the parity tiers on `folder` through `backend` ('ort' or 'trt').

    record: run scr_ref (torch) and store the golden file first; live: compare with scr_ref
    run now instead of the golden file; dtype: thresholds of that dtype (default: the
    artifact's), each overridable through `overrides` (see `tiers.with_overrides`); dump:
    write the first diverging call's inputs there (onnxruntime only)."""
    from scredge.runtime.engine import check_backend_options

    check_backend_options(backend, cuda_graph)
    if backend == "trt" and dump is not None:
        raise ScredgeError("--dump replays a call in onnxruntime: it needs --backend ort",
                           received="--backend trt --dump", expected="--backend ort --dump DIR")
    artifact = open_artifact(folder)
    if dump is not None and ort_graph(artifact, ort_kind(device))[1] == CACHE_SHARED:
        raise ScredgeError(
            "--dump writes one call's inputs to replay, which the shared KV-cache form has "
            "not (its cache is a buffer updated in place across calls)",
            received=f"{artifact.folder}: onnxruntime graph with the shared cache (the "
                     "default form)",
            expected="a concat-form graph for --dump",
            fix="run without --dump (the first divergence is still reported), or export "
                "with --cache concat and dump that folder")
    if artifact.quantization:  # its own tier, from the held-out reference (SCR_SPEC section 5)
        given = [f for f, v in (("--record", record), ("--live", live), ("--dump", dump),
                                ("--dtype", dtype)) if v]
        if given:
            raise ScredgeError("these options are for float artifacts", received=given,
                               expected="none: a quantized artifact's held-out reference was "
                                        "recorded at export (parity/heldout.npz)")
        from scredge.quantized_tier import run_quantized_parity

        runner = _runner(artifact, backend, device, cuda_graph)
        report = run_quantized_parity(artifact, runner, getattr(runner, "graph", None)
                                      or artifact.graph_file(backend))
        report.precision, report.backend = artifact.precision, backend
        return report
    if record:
        from scredge.parity.record import record_into

        log(f"recording the reference (scr_ref) into {artifact.folder / GOLDEN_FILE} ...")
        artifact = record_into(artifact)  # its manifest now lists the golden file
    if live:
        from scredge.parity.record import record_golden

        golden = record_golden(artifact)
    else:
        golden = Golden.load(listed_golden(artifact), read_listed_bytes(
            artifact.folder, artifact.manifest, GOLDEN_FILE, "golden reference"))
    th: Thresholds = with_overrides(tier_thresholds(dtype or artifact.dtype),
                                    **(overrides or {}))
    runner = _runner(artifact, backend, device, cuda_graph)
    if backend == "trt":
        from scredge.parity.runner_tiers import runner_parity

        return runner_parity(artifact, golden, runner, th)
    from scredge.parity.ort_tiers import run_parity

    return run_parity(artifact, golden, runner, th, device=runner.device, dump=dump)


def _runner(artifact, backend: str, device: str, cuda_graph: bool):
    if backend == "trt":
        from scredge.runtime.trt_loader import load_trt_runner

        return load_trt_runner(artifact, cuda_graph=cuda_graph)
    return load_ort(artifact, device=device)
