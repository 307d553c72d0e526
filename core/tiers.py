"""Parity tiers of SCR_SPEC section 5, in NumPy: shared by export verification, the
parity tool and the runtime, so every backend is judged by the same numbers."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from scredge.errors import ScredgeError


@dataclass(frozen=True)
class LogitsThresholds:
    max_abs: float | None  # None: reported, not enforced
    kl: float  # KL(ref || backend), per position, max over positions
    top1: float  # fraction of positions whose argmax agrees (near-ties excluded)
    margin: float  # a position is a near-tie when ref's top-2 gap is below this


@dataclass(frozen=True)
class Thresholds:
    """Every tier of SCR_SPEC section 5 for one dtype; override any field with replace()."""

    op_abs: float  # Realign: max abs error / scale, scale = max(1, max|h|, max|m_prev|)
    layer_cosine: float  # hidden state after each layer: minimum cosine similarity
    layer_norm_tol: float  # and |norm ratio - 1|
    logits: LogitsThresholds
    greedy_identical: bool  # free-running greedy must match exactly (else: reported)


TIERS = {
    "float32": Thresholds(1e-5, 0.99999, 1e-4, LogitsThresholds(
        max_abs=1e-3, kl=1e-6, top1=1.0, margin=1e-3), True),
    "float16": Thresholds(2e-3, 0.999, 1e-2, LogitsThresholds(
        max_abs=None, kl=1e-3, top1=0.99, margin=5e-2), False),
}


def with_overrides(th: Thresholds, *, op_abs: float | None = None,
                   layer_cosine: float | None = None, layer_norm_tol: float | None = None,
                   max_abs: float | None = None, kl: float | None = None,
                   top1: float | None = None) -> Thresholds:
    """`th` with every threshold given (not None) replaced: `scredge parity`'s overrides."""
    tiers = {k: v for k, v in (("op_abs", op_abs), ("layer_cosine", layer_cosine),
                                ("layer_norm_tol", layer_norm_tol)) if v is not None}
    logits = {k: v for k, v in (("max_abs", max_abs), ("kl", kl), ("top1", top1))
              if v is not None}
    return replace(th, **tiers, logits=replace(th.logits, **logits))


def tier_thresholds(dtype: str) -> Thresholds:
    if dtype not in TIERS:
        raise ScredgeError("no parity thresholds for this dtype", received=repr(dtype),
                           expected=f"one of {sorted(TIERS)}",
                           fix="export the model as float32 or float16")
    return TIERS[dtype]


def hidden_metrics(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """ref, got [..., D] -> (min cosine, max |norm ratio - 1|) over positions."""
    r = np.asarray(ref, np.float64).reshape(-1, ref.shape[-1])
    g = np.asarray(got, np.float64).reshape(-1, ref.shape[-1])
    rn, gn = np.linalg.norm(r, axis=-1), np.linalg.norm(g, axis=-1)
    cos = np.sum(r * g, axis=-1) / np.maximum(rn * gn, 1e-30)
    return float(cos.min()), float(np.abs(gn / np.maximum(rn, 1e-30) - 1).max())


def logits_thresholds(dtype: str) -> LogitsThresholds:
    return tier_thresholds(dtype).logits


@dataclass
class LogitsReport:
    max_abs: float
    kl_max: float
    top1: float  # agreement over decisive positions
    decisive: int  # positions compared for top-1
    near_ties: int  # positions excluded from top-1
    positions: int
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        status = "PASS" if self.passed else "FAIL: " + "; ".join(self.failures)
        return (f"max|diff| {self.max_abs:.3g}, KL max {self.kl_max:.3g}, top-1 "
                f"{self.top1:.2%} over {self.decisive} positions ({self.near_ties} near-ties "
                f"excluded) -> {status}")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def decisive_top1(ref_margin: np.ndarray, ref_top1: np.ndarray, got_top1: np.ndarray,
                  margin: float) -> tuple[float, int]:
    """(top-1 agreement, positions counted) over the positions the reference decides: its
    top-2 logit gap at least `margin`. Near-ties may flip under any rounding, so they are
    not counted against a backend; with none decisive, agreement is 1."""
    decisive = ref_margin >= margin
    n = int(decisive.sum())
    return (float((got_top1[decisive] == ref_top1[decisive]).mean()) if n else 1.0), n


COMPARE_CHUNK_BYTES = 1 << 20  # float64 bytes of a row chunk (compare_logits: ~8 live at once)


def compare_logits(ref: np.ndarray, got: np.ndarray, t: LogitsThresholds) -> LogitsReport:
    """ref, got [..., V]: the logits tier, per position. Every measure is per row (a
    position) or a max over rows, so the rows are taken a few at a time: the same numbers
    as over all rows at once, without float64 copies of every row beside the caller's
    onnxruntime session (131 MB of numpy buffers at once at a 49k vocabulary and 58
    positions, 6 MB in chunks: the peak of a float16 export's verification)."""
    if ref.shape != got.shape:
        raise ScredgeError("logits shapes differ", received=str(got.shape),
                           expected=str(ref.shape))
    vocab = ref.shape[-1]
    r_all, g_all = np.reshape(ref, (-1, vocab)), np.reshape(got, (-1, vocab))
    if not np.isfinite(g_all).all():  # a widening cast keeps NaN and Inf as they are
        return LogitsReport(float("inf"), float("inf"), 0.0, 0, 0, len(r_all),
                            ["backend logits contain NaN or Inf"])
    rows = max(1, COMPARE_CHUNK_BYTES // (8 * vocab))
    max_abs, kl = -np.inf, -np.inf
    margins, ref_top, got_top = [], [], []
    for lo in range(0, len(r_all), rows):
        r = np.asarray(r_all[lo:lo + rows], np.float64)
        g = np.asarray(g_all[lo:lo + rows], np.float64)
        max_abs = max(max_abs, float(np.abs(r - g).max()))
        lr, lg = _log_softmax(r), _log_softmax(g)
        kl = max(kl, float(np.max(np.sum(np.exp(lr) * (lr - lg), axis=-1))))
        top2 = np.partition(r, (-2, -1), axis=-1)[:, -2:]  # a sort cost ~1 s a graph at 152k
        margins.append(top2[:, 1] - top2[:, 0])
        ref_top.append(r.argmax(-1))
        got_top.append(g.argmax(-1))
    top1, n = decisive_top1(np.concatenate(margins), np.concatenate(ref_top),
                            np.concatenate(got_top), t.margin)
    rep = LogitsReport(max_abs, max(kl, 0.0), top1, n, len(r_all) - n, len(r_all))
    if t.max_abs is not None and max_abs > t.max_abs:
        rep.failures.append(f"max|diff| {max_abs:.3g} > {t.max_abs:g}")
    if kl > t.kl:
        rep.failures.append(f"KL {kl:.3g} > {t.kl:g}")
    if top1 < t.top1:
        rep.failures.append(f"top-1 {top1:.2%} < {t.top1:.0%}")
    return rep


@dataclass(frozen=True)
class QuantizedThresholds:
    """The quantized tier (SCR_SPEC section 5): weight-only artifacts against the float32
    reference over held-out text, teacher-forced."""

    ppl_ratio: float  # perplexity (artifact / reference), at most
    top1: float  # top-1 agreement over decisive positions, at least
    margin: float = 5e-2  # near-tie: reference's top-2 logit gap below this


QUANTIZED_TIERS = {8: QuantizedThresholds(1.01, 0.98), 4: QuantizedThresholds(1.05, 0.90)}


def quantized_thresholds(bits: int) -> QuantizedThresholds:
    if bits not in QUANTIZED_TIERS:
        raise ScredgeError("no quantized tier for this bit width", received=bits,
                           expected=f"one of {sorted(QUANTIZED_TIERS)}")
    return QUANTIZED_TIERS[bits]
