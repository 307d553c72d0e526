"""Teacher-forced parity between two steppers of the same model (SCR_SPEC section 5, logits
tier): a prefill and decode calls that each thread their own state, both fed the reference's
greedy tokens, so a divergence shows up at the step where it starts, not as drift.

Torch-free and backend-free: the exporter checks a graph against `scr_ref` with it, and
`scredge build` checks a built engine against the exported graph with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from scredge.tiers import LogitsReport, compare_logits, logits_thresholds

Stepper = Callable[[np.ndarray, np.ndarray], np.ndarray]  # ids, positions [B,T] -> [B,T,V]


@dataclass
class TeacherForcedReport:
    dtype: str
    phases: list[tuple[str, LogitsReport]]

    @property
    def passed(self) -> bool:
        return all(r.passed for _, r in self.phases)

    def failures(self) -> str:
        return "; ".join(f"{n}: {', '.join(r.failures)}" for n, r in self.phases if not r.passed)

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


def teacher_forced(reference: Stepper, candidate: Stepper, vocab_size: int, dtype: str, *,
                   batch: int = 2, prompt_len: int = 24, decode_steps: int = 8,
                   seed: int = 0) -> TeacherForcedReport:
    thresholds = logits_thresholds(dtype)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab_size, size=(batch, prompt_len), dtype=np.int64)
    phases: list[tuple[str, LogitsReport]] = []
    start = 0
    for step in range(decode_steps + 1):
        T = ids.shape[1]
        pos = np.tile(np.arange(start, start + T, dtype=np.int64), (batch, 1))
        ref = np.asarray(reference(ids, pos), dtype=np.float32).copy()
        got = np.asarray(candidate(ids, pos), dtype=np.float32)
        phases.append(("prefill" if step == 0 else f"decode {step}",
                       compare_logits(ref, got, thresholds)))
        start += T
        ids = ref[:, -1].argmax(-1).astype(np.int64)[:, None]
    return TeacherForcedReport(dtype, phases)
