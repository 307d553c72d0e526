"""Engine building (`scredge build`): the onnxruntime-optimised graph, or a TensorRT engine
with the `Realign` plugin, each checked against the exported graph and listed in the
artifact's manifest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from scredge.errors import ScredgeError

BUILD_TARGETS = ("auto", "ort", "tensorrt", "tensorrt_rtx")  # `scredge build --backend`


def build(folder: str | Path, target: str = "auto", *, device: str = "auto",
          no_plugin: bool = False, max_batch: int = 4, max_prefill: int | None = None,
          max_context: int | None = None, timing_cache: Path | None = None,
          log: Callable[[str], None] = lambda s: None) -> tuple[Path, str]:
    """Build the engine `target` names ('auto': TensorRT when it imports and a GPU is
    present, else the onnxruntime-optimised graph) into `folder`. Returns the file written
    and a short description of it."""
    from scredge.builder.trt_build import pick_backend
    from scredge.runtime.loaders import open_artifact

    if target not in BUILD_TARGETS:
        raise ScredgeError("unknown build target", received=repr(target),
                           expected=f"one of {list(BUILD_TARGETS)}")
    chosen = pick_backend(target)
    if chosen == "ort":
        trt_only = {"--no-plugin": no_plugin, "--max-prefill": max_prefill,
                    "--max-context": max_context, "--timing-cache": timing_cache}
        given = [k for k, v in trt_only.items() if v not in (None, False)]
        if given:
            raise ScredgeError("these options are for TensorRT builds", received=given,
                               expected=f"--backend tensorrt or tensorrt_rtx "
                                        f"(--backend {target} chose ort)")
        from scredge.builder.ort_build import build_ort

        path, _ = build_ort(open_artifact(folder), device=device, log=log)
        return path, "onnxruntime-optimised graph"
    from scredge.builder.trt_build import build_trt

    path, entry = build_trt(open_artifact(folder), chosen, no_plugin=no_plugin,
                            max_batch=max_batch, max_prefill=max_prefill,
                            max_context=max_context, timing_cache=timing_cache, log=log)
    return path, f"{entry['backend']} {entry['tensorrt']}, {entry['plugin_mode']} mode"
