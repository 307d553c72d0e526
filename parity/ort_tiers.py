"""`scredge parity`: every tier of SCR_SPEC section 5 against the golden file, torch-free,
with a decode-aware bisect: the first (decode step, layer) where a divergence crosses its
threshold, and an optional dump of that step's inputs and state for `polygraphy run`.

Tiers: op (the artifact's `Realign` function alone), layer (hidden state after each layer,
through a copy of the graph that exposes them), logits (the prefill), teacher-forced decode
(N steps fed the reference's tokens; each backend threads its own state), free-running
greedy (agreement length over the reference's greedy tokens).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from scredge.contract import (
    ATTENTION_MASK,
    CACHE_SHARED,
    INPUT_IDS,
    LOGITS,
    ONNX_FILE,
    POSITION_IDS,
    past_kv,
)
from scredge.golden_file import Golden
from scredge.parity.graph_surgery import hidden_output, realign_alone, with_hidden_outputs
from scredge.parity.report import ParityReport, TierResult
from scredge.runtime.cache import empty_state, state_from_outputs
from scredge.runtime.generation import positions
from scredge.runtime.loaders import Artifact, ort_graph, ort_kind, ort_session, verified_graph
from scredge.tiers import Thresholds, compare_logits, hidden_metrics


def op_tier(artifact: Artifact, golden: Golden, th: Thresholds, device: str) -> TierResult:
    """The artifact's own `Realign` function alone, in onnxruntime."""
    if not artifact.config.scr_layers:
        return plain_op_tier()
    graph, _ = verified_graph(artifact, ONNX_FILE)  # the bytes the manifest lists
    session = ort_session(realign_alone(graph, golden.kappa), device)
    return op_tier_with(lambda feed: session.run(None, feed), artifact, golden, th)


def plain_op_tier() -> TierResult:
    """A plain transformer (scr_layers = []) has no Realign op to compare."""
    return TierResult("op (Realign)", None,
                      "not run: a plain transformer (scr_layers = []) has no Realign op")


def op_tier_with(run_case, artifact: Artifact, golden: Golden, th: Thresholds,
                 label: str = "op (Realign)") -> TierResult:
    """Compare `run_case(feed) -> [m, num_out, den_out]` with the golden op cases."""
    x = artifact.kv_dtype
    worst = 0.0
    for ins, outs in zip(golden.op_inputs, golden.op_outputs):
        feed = dict(zip(("h", "m_prev", "num_in", "den_in", "w_r", "b_r", "w_g", "b_g"), ins))
        feed["h"], feed["m_prev"] = feed["h"].astype(x), feed["m_prev"].astype(x)
        got = run_case(feed)
        scale = max(1.0, float(np.abs(ins[0]).max()), float(np.abs(ins[1]).max()))
        m_err = float(np.abs(got[0].astype(np.float32) - outs[0]).max()) / scale
        carry = max(float(np.abs(g - o).max() / max(1.0, np.abs(o).max()))
                    for g, o in zip(got[1:], outs[1:]))
        worst = max(worst, m_err, carry)
    cases = ", ".join(f"B{a[0].shape[0]} T{a[0].shape[1]}" for a in golden.op_inputs)
    return TierResult(label, worst <= th.op_abs,
                      f"max err/scale {worst:.3g} (<= {th.op_abs:g}) over {cases}",
                      {"max_err_over_scale": worst})


def decode_tiers(artifact: Artifact, golden: Golden, th: Thresholds, device: str,
                 dump: Path | None = None) -> tuple[list[TierResult], dict | None]:
    """Layer, logits and teacher-forced decode tiers, and the first divergence."""
    # the graph load_ort runs there (CUDA: a shared folder's concat graph), as verified
    name, form = ort_graph(artifact, ort_kind(device))
    graph, external = verified_graph(artifact, name)  # the bytes the manifest lists
    session = ort_session(with_hidden_outputs(graph), device, external_data=external,
                          external_folder=artifact.folder)
    names = [o.name for o in session.get_outputs()]
    c = artifact.config
    B = golden.steps_ids[0].shape[0]
    state = empty_state(c, B, artifact.kv_dtype)
    shared = _shared_decoder(artifact, session, B) if form == CACHE_SHARED else None
    start, first, worst_layer = 0, None, (1.0, 0.0)
    logit_reports = []
    for k, (ids, ref_logits, ref_hidden) in enumerate(zip(
            golden.steps_ids, golden.steps_logits, golden.steps_hidden)):
        T = ids.shape[1]
        pos = positions(start, B, T)
        if shared is not None:  # the shared form: its own decoder, fetching the hidden states
            out = {LOGITS: shared.step(ids, pos).copy(), **shared.last_extra}
            feed = None  # no single-call repro of an in-place cache
        else:
            P = state[past_kv(0, "key")].shape[2]
            feed = {INPUT_IDS: ids, POSITION_IDS: pos,
                    ATTENTION_MASK: np.ones((B, P + T), np.int64), **state}
            out = dict(zip(names, session.run(None, feed)))
        phase = "prefill" if k == 0 else f"decode {k}"
        for l in range(c.n_layers):
            cos, norm = hidden_metrics(ref_hidden[l], out[hidden_output(l)])
            worst_layer = (min(worst_layer[0], cos), max(worst_layer[1], norm))
            if first is None and (cos < th.layer_cosine or norm > th.layer_norm_tol):
                first = {"step": k, "phase": phase, "layer": l, "tier": "layer",
                         "cosine": cos, "norm_ratio_error": norm}
                if dump is not None and feed is not None:
                    write_repro(dump, artifact, feed, k, l)
        report = compare_logits(ref_logits, out[LOGITS], th.logits)
        logit_reports.append(report)
        if first is None and not report.passed:  # logits diverge with every layer in bounds
            first = {"step": k, "phase": phase, "layer": c.n_layers - 1, "tier": "logits"}
            if dump is not None and feed is not None:
                write_repro(dump, artifact, feed, k, c.n_layers - 1)
        state = shared.state() if shared is not None else state_from_outputs(out)
        start += T
    layer_ok = worst_layer[0] >= th.layer_cosine and worst_layer[1] <= th.layer_norm_tol
    tiers = [
        TierResult("layer", layer_ok,
                   f"min cosine {worst_layer[0]:.7f} (>= {th.layer_cosine}), max |norm ratio"
                   f" - 1| {worst_layer[1]:.2g} (<= {th.layer_norm_tol:g}), {c.n_layers} "
                   f"layers x {len(golden.steps_ids)} calls",
                   {"min_cosine": worst_layer[0], "max_norm_ratio_error": worst_layer[1]}),
        *logits_tiers(logit_reports, state_error(state, golden)),
    ]
    return tiers, first


def _shared_decoder(artifact: Artifact, session, batch: int):
    """For a shared-cache graph (SCR_SPEC v3 section 3): a SharedDecoder over `session` (the
    graph with every layer's hidden state as an output) that fetches those outputs too."""
    from scredge.runtime.runners.ort_runner import OrtRunner
    from scredge.runtime.shared_cache import SharedDecoder

    dec = SharedDecoder(OrtRunner(session, artifact.config, artifact.kv_dtype), batch)
    dec.extra_outputs = [hidden_output(layer) for layer in range(artifact.config.n_layers)]
    return dec


def state_error(state: dict[str, np.ndarray], golden: Golden) -> float:
    """Relative error of a final state (past_* names, host arrays) against the golden one."""
    expected = state_from_outputs(golden.final_state)  # same names as `state`
    return max(float(np.abs(state[n].astype(np.float32) - v).max())
               / max(1.0, float(np.abs(v).max())) for n, v in expected.items())


def logits_tiers(reports: list, state_err: float | None) -> list[TierResult]:
    """The logits tier (the prefill, reports[0]) and the teacher-forced decode tier (the
    rest), whatever backend produced them."""
    first, decode = reports[0], reports[1:]
    failed = [k + 1 for k, r in enumerate(decode) if not r.passed]
    metrics = {"max_abs": first.max_abs, "kl_max": first.kl_max, "top1": first.top1,
               "near_ties": first.near_ties, "positions": first.positions}
    return [
        TierResult("logits", first.passed, first.summary(), metrics),
        TierResult(
            "teacher-forced decode", not failed,
            f"{len(decode)} steps, worst KL {max(r.kl_max for r in decode):.3g}, worst "
            f"max|diff| {max(r.max_abs for r in decode):.3g}, min top-1 "
            f"{min(r.top1 for r in decode):.2%}"
            + (f", final state rel. err {state_err:.2g}" if state_err is not None else "")
            + (f"; failing steps {failed[:5]}" if failed else ""),
            {"steps": len(decode), "failing_steps": failed, "final_state_rel_err": state_err,
             "kl_max": max(r.kl_max for r in decode)}),
    ]


def greedy_tier(runner, golden: Golden, th: Thresholds) -> TierResult:
    from scredge.runtime.generation import Generator

    n = len(golden.greedy_ids)
    gen = Generator(runner, max_new_tokens=n)
    gen.append(golden.greedy_prompt)
    got = [int(gen.next_token()[0]) for _ in range(n)]
    agree = next((i for i, (a, b) in enumerate(zip(got, golden.greedy_ids)) if a != b), n)
    passed = agree == n if th.greedy_identical else None
    return TierResult("free-running greedy", passed,
                      f"{agree}/{n} tokens identical to the reference",
                      {"agreement_length": agree, "tokens": n})


def run_parity(artifact: Artifact, golden: Golden, runner, th: Thresholds,
               device: str = "cpu", dump: Path | None = None) -> ParityReport:
    t0 = time.perf_counter()
    golden.check_matches(artifact)
    tiers = [op_tier(artifact, golden, th, device)]
    decode, first = decode_tiers(artifact, golden, th, device, dump)
    tiers += decode
    tiers.append(greedy_tier(runner, golden, th))
    return ParityReport(runner.backend, artifact.dtype, tiers, first,
                        time.perf_counter() - t0)


def write_repro(folder: Path, artifact: Artifact, feed: dict, step: int, layer: int) -> None:
    """The inputs and state of the failing call, for `polygraphy run --load-inputs`."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "inputs.npz", **feed)
    try:
        from polygraphy.json import save_json
    except ImportError:
        save_json = None
    if save_json is not None:
        save_json([{k: np.asarray(v) for k, v in feed.items()}], str(folder / "inputs.json"))
    model = artifact.folder / ONNX_FILE
    (folder / "README.txt").write_text(
        f"scredge parity: first divergence at call {step} (0 = prefill), layer {layer}.\n"
        f"inputs.npz / inputs.json: that call's inputs, KV and SCR state included.\n\n"
        f"Replay on any box (onnxruntime only):\n"
        f"  polygraphy run {model} --onnxrt --load-inputs inputs.json --save-outputs ort.json\n"
        f"Compare onnxruntime and TensorRT (a box with TensorRT and the plugin):\n"
        f"  polygraphy run {model} --onnxrt --trt --plugins libscr_realign_plugin.so \\\n"
        f"      --onnx-flags enable_plugin_override --load-inputs inputs.json \\\n"
        f"      --atol 1e-3 --rtol 1e-3 --check-error-stat median\n"
        + ("" if save_json else "(polygraphy was not installed: only inputs.npz was written;"
           " pip install polygraphy for inputs.json)\n"))
