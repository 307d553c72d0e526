"""Export-time verification: the new graph in onnxruntime (CPU) against the float32 reference,
over a prefill call and teacher-forced decode calls that thread the state (SCR_SPEC section 5,
logits tier). The exporter refuses an artifact that fails."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scredge.deps import require
from scredge.runtime.cache import empty_state, state_from_outputs
from scredge.tiers import LogitsReport, compare_logits, logits_thresholds


@dataclass
class VerifyReport:
    dtype: str
    phases: list[tuple[str, LogitsReport]]

    @property
    def passed(self) -> bool:
        return all(r.passed for _, r in self.phases)

    def lines(self) -> list[str]:
        """One line for the prefill, one for the worst of the decode steps."""
        prefill, decode = self.phases[0], [r for _, r in self.phases[1:]]
        out = [f"prefill:  {prefill[1].summary()}"]
        if decode:
            worst = LogitsReport(
                max(r.max_abs for r in decode), max(r.kl_max for r in decode),
                min(r.top1 for r in decode), sum(r.decisive for r in decode),
                sum(r.near_ties for r in decode), sum(r.positions for r in decode),
                [f for r in decode for f in r.failures])
            out.append(f"decode x{len(decode)}: {worst.summary()}")
        return out


def verify_onnx(onnx_path: Path, model, dtype: str, *, batch: int = 2, prompt_len: int = 24,
                decode_steps: int = 8, seed: int = 0) -> VerifyReport:
    """Compare `onnx_path` run by onnxruntime with `model` (the float32 reference)."""
    ort = require("onnxruntime")
    torch = require("torch")
    c = model.config
    thresholds = logits_thresholds(dtype)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    kv_dtype = np.float16 if dtype == "float16" else np.float32

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, c.vocab_size, size=(batch, prompt_len), dtype=np.int64)
    state = empty_state(c, batch, kv_dtype)
    ref_state = None
    phases: list[tuple[str, LogitsReport]] = []
    start = 0
    for step in range(decode_steps + 1):
        T = ids.shape[1]
        pos = np.broadcast_to(np.arange(start, start + T, dtype=np.int64), (batch, T)).copy()
        outputs = dict(zip(names, session.run(None, {"input_ids": ids, "position_ids": pos,
                                                     **state})))
        with torch.no_grad():
            ref, ref_state = model(torch.from_numpy(ids), torch.from_numpy(pos), ref_state)
        ref = ref.numpy()
        phases.append(("prefill" if step == 0 else f"decode {step}",
                       compare_logits(ref, outputs["logits"], thresholds)))
        state = state_from_outputs(outputs)
        start += T
        ids = ref[:, -1].argmax(-1).astype(np.int64)[:, None]  # teacher-forced: ref's tokens
    return VerifyReport(dtype, phases)
