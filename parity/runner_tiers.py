"""`scredge parity --backend trt`: the tiers a runner can run on its own, against the golden
file (SCR_SPEC section 5).

The op and layer tiers need the ONNX graph itself (the `Realign` function alone, and a copy
exposing every layer's hidden state), which a TensorRT engine does not expose; they are
listed as not run, never as passed. Logits, teacher-forced decode and free-running greedy
go through the runner's own decoder, with its state kept where the runner keeps it.
"""

from __future__ import annotations

import time

from scredge.golden_file import Golden
from scredge.parity.ort_tiers import (
    greedy_tier,
    logits_tiers,
    op_tier_with,
    plain_op_tier,
    state_error,
)
from scredge.parity.report import ParityReport, TierResult
from scredge.runtime.generation import positions
from scredge.runtime.loaders import Artifact
from scredge.tiers import Thresholds, compare_logits


def runner_parity(artifact: Artifact, golden: Golden, runner, th: Thresholds) -> ParityReport:
    t0 = time.perf_counter()
    golden.check_matches(artifact)
    skipped = f"not run on {runner.backend}: needs the ONNX graph; run `scredge parity " \
              f"{artifact.folder} --backend ort` for it"
    tiers = [_op_tier(artifact, golden, runner, th), TierResult("layer", None, skipped)]
    B = golden.steps_ids[0].shape[0]
    dec = runner.decoder(B)
    start, reports = 0, []
    for ids, ref_logits in zip(golden.steps_ids, golden.steps_logits):
        T = ids.shape[1]
        pos = positions(start, B, T)
        reports.append(compare_logits(ref_logits, dec.step(ids, pos), th.logits))
        start += T
    first = None
    bad = next((k for k, r in enumerate(reports) if not r.passed), None)
    if bad is not None:
        first = {"step": bad, "phase": "prefill" if bad == 0 else f"decode {bad}",
                 "layer": artifact.config.n_layers - 1, "tier": "logits"}
    tiers += logits_tiers(reports, _state_error(dec, golden))
    tiers.append(greedy_tier(runner, golden, th))
    return ParityReport(runner.backend, artifact.dtype, tiers, first, time.perf_counter() - t0)


def _op_tier(artifact: Artifact, golden: Golden, runner, th: Thresholds) -> TierResult:
    """The plugin alone vs the reference, when the runner is TensorRT with the plugin."""
    entry = getattr(runner, "entry", None) or {}
    if not artifact.config.scr_layers:
        return plain_op_tier()
    if runner.backend != "trt" or not entry.get("plugins"):
        why = "the engine runs the decomposed function (--no-plugin)" if entry else \
            f"{runner.backend} has no Realign plugin"
        return TierResult("op (Realign)", None, f"not run: {why}; the ONNX function is "
                          f"checked by `scredge parity {artifact.folder} --backend ort`")
    from scredge.builder.trt_build import import_trt
    from scredge.device import compute_capability
    from scredge.parity.trt_op_tier import build_realign_engine, trt_case_runner

    trt = import_trt(entry["backend"])
    engine = build_realign_engine(trt, artifact, golden, entry["backend"], compute_capability())
    run_case = trt_case_runner(trt, engine, runner.cuda)
    return op_tier_with(run_case, artifact, golden, th, label="op (Realign plugin)")


def _state_error(dec, golden: Golden) -> float | None:
    """Relative error of the decoder's final state, when it can show it on the host."""
    state = getattr(dec, "state", None)
    state = state() if callable(state) else state
    if not isinstance(state, dict):
        return None
    return state_error(state, golden)
