"""The memory check of `scredge export` (issue 27, bad input): a model too large for the
memory left is refused before any work starts, with the estimate.

The streamed float export (export/stamp.py, stream_write.py, reference_pass.py) holds the
float32 reference weights once (pages of the memory-mapped source, handed back after each
step) plus a fixed part: torch, onnxruntime's session, the golden's arrays; beside it, the
shallow trace's child process. Fitted to the peak RSS measured in
docs/performance-export.md (weights + 530 to 750 MiB for the exporting process at 514 MiB,
1,885 MiB and 5,889 MiB of weights; the trace's child about 730 MiB whatever the size), with
slack. A quantized or shared-cache export, which traces the whole graph, needs more: for
those the estimate is a lower bound.
"""

from __future__ import annotations

import math

from scredge.memory import refuse_over_memory

EXPORT_FIXED_BYTES = 1 << 30  # the exporting process beside the weights
TRACE_CHILD_BYTES = 768 << 20  # the shallow trace's child process, at the same time


def export_memory_estimate(config) -> dict[str, int]:
    """Bytes the streamed export of a model of `config` needs at its peak."""
    weights = 4 * sum(math.prod(s) for s in config.parameter_shapes().values())
    return {"weights": weights,
            "total": weights + EXPORT_FIXED_BYTES + TRACE_CHILD_BYTES}


def check_export_memory(config, available: int | None) -> dict[str, int]:
    """Refuse an export whose estimate exceeds `available` bytes (None: not checked)."""
    est = export_memory_estimate(config)
    refuse_over_memory(
        "the export", {"of float32 weights": est["weights"], "for the export": EXPORT_FIXED_BYTES,
                       "for the graph's trace": TRACE_CHILD_BYTES},
        available, "MemAvailable now",
        fix="close other programs or export on a machine with more memory",
        ignore_note=" (the weights are file pages the system can evict, so it may still "
                    "finish, slowly)")
    return est
