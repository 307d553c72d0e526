"""What a parity run reports: one result per tier of SCR_SPEC section 5, the first place
the backend diverged, and a table or JSON of it all."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class TierResult:
    tier: str
    passed: bool | None  # None: reported, not enforced (e.g. float16 greedy)
    summary: str
    metrics: dict = field(default_factory=dict)


@dataclass
class ParityReport:
    backend: str
    dtype: str
    tiers: list[TierResult]
    first_divergence: dict | None  # {"step": k, "layer": l, "tier": ...} or None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(t.passed is not False for t in self.tiers)

    def table(self) -> str:
        rows = [f"{'tier':<22} {'result':<7} summary"]
        for t in self.tiers:
            mark = {True: "PASS", False: "FAIL", None: "report"}[t.passed]
            rows.append(f"{t.tier:<22} {mark:<7} {t.summary}")
        if self.first_divergence:
            d = self.first_divergence
            rows.append(f"first divergence: step {d['step']} ({d['phase']}), layer {d['layer']}"
                        f" ({d['tier']})")
        rows.append(f"overall: {'PASS' if self.passed else 'FAIL'} "
                    f"({self.backend}, {self.dtype}, {self.seconds:.1f} s)")
        return "\n".join(rows)

    def to_json(self) -> dict:
        return {"backend": self.backend, "dtype": self.dtype, "passed": self.passed,
                "first_divergence": self.first_divergence, "seconds": self.seconds,
                "tiers": [asdict(t) for t in self.tiers]}
