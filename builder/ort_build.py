"""`scredge build --backend ort`: save the onnxruntime-optimised graph beside model.onnx,
check it against the exported graph, and list it in the manifest.

The optimised graph is tied to the onnxruntime version and provider that made it (its fused
kernels are theirs), so the manifest records both and the loader uses it only when they
match. The check is torch-free: the exported graph was verified against the reference at
export time, so parity with it closes the chain.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from scredge.artifact import add_to_manifest
from scredge.contract import ORT_OPTIMIZED_FILE
from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.runtime.loaders import (
    DEQUANTIZE_FORM_ENTRIES,
    Artifact,
    ort_graph,
    ort_kind,
    ort_providers,
    ort_session,
    verified_graph,
)
from scredge.runtime.runners.ort_runner import OrtRunner
from scredge.teacher_forced import TeacherForcedReport, teacher_forced


def build_ort(artifact: Artifact, device: str = "cpu",
              log: Callable[[str], None] = lambda s: None) -> tuple[Path, TeacherForcedReport]:
    ort = require("onnxruntime")
    providers = ort_providers(device)
    kind = ort_kind(device)
    device = kind  # 'auto' resolved once: every session below runs where the graph is for
    name = ORT_OPTIMIZED_FILE.format(device=kind)
    target = artifact.folder / name
    tmp = artifact.folder / f".{name}.partial"
    # the graph load_ort runs on this device (CUDA: a shared-cache folder's concat graph);
    # the bytes the manifest verifies, not the file by path (swapped after open: refused)
    source = ort_graph(artifact, kind)[0]
    graph, external = verified_graph(artifact, source)
    entries = (DEQUANTIZE_FORM_ENTRIES if source != artifact.graph_file("ort")
               and artifact.quantization else None)
    log(f"optimising the graph for onnxruntime {ort.__version__} ({providers[0]}) ...")
    try:
        ort_session(graph, device, save_optimized=tmp, external_data=external,
                    external_folder=artifact.folder, config_entries=entries)
        log("checking the optimised graph against the exported one ...")

        def runner(model: Path | bytes) -> OrtRunner:  # as written: no further optimisation
            in_memory = isinstance(model, bytes)
            session = ort_session(model, device, optimize=False, config_entries=entries,
                                  external_data=external if in_memory else None,
                                  external_folder=artifact.folder if in_memory else None)
            return OrtRunner(session, artifact.config, artifact.kv_dtype)

        report = teacher_forced(runner(graph).decoder(2).step,
                                runner(tmp).decoder(2).step,
                                artifact.config.vocab_size, artifact.dtype)
        for line in report.lines():
            log("  " + line)
        if not report.passed:
            raise ScredgeError("the optimised graph does not match the exported graph",
                               received=report.failures(), expected="the logits tier",
                               fix="nothing was changed; run with the plain model.onnx")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    add_to_manifest(artifact.folder, [name], engines={f"ort-{kind}": {
        "file": name, "backend": "onnxruntime", "onnxruntime": ort.__version__,
        "providers": providers}})
    return target, report
