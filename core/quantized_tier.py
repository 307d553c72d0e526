"""The quantized tier of SCR_SPEC section 5, torch-free.

A weight-only int8 / int4 artifact is compared with the float32 reference over held-out
text, teacher-forced (>= 4,096 tokens): perplexity ratio, top-1 agreement (near-ties under
5e-2 excluded), no non-finite logits. The reference side travels in the artifact as
`parity/heldout.npz` (the token ids, and per position the reference's log-probability of
the next token, its argmax and its top-2 margin), recorded at export where torch is; any
device can then judge any backend with this module alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from scredge.arrays_file import check_array, open_arrays, save_arrays
from scredge.artifact import listed_member, read_listed_bytes
from scredge.contract import HELDOUT_FILE
from scredge.errors import ScredgeError
from scredge.tiers import QuantizedThresholds, decisive_top1, quantized_thresholds

HELDOUT_TOKENS = 4096  # positions scored (SCR_SPEC section 5: at least 4,096)
CHUNK = 256  # tokens per teacher-forced call (chunked prefill threading the state)
STATS_ROWS = 32  # positions scored at a time (teacher_forced_stats)
KL_TOPK = 32  # the reference's most likely tokens kept per position for the KL divergence


@dataclass
class PositionStats:
    """Per scored position t: log p(ids[t+1] | ids[:t+1]), argmax and top-2 logit margin."""

    logprob: np.ndarray  # [N] float64
    top1: np.ndarray  # [N] int64
    margin: np.ndarray  # [N] float32
    nonfinite: int = 0  # positions whose logits hold NaN or Inf
    # the reference's side: its KL_TOPK most likely ids [N,k] int32 and log-probs [N,k]
    topk_ids: np.ndarray | None = None
    topk_logprob: np.ndarray | None = None
    # a backend's side: KL(reference || backend) per position [N] over the reference's
    # top-k tokens and the rest as one bucket (a lower bound of the full KL)
    kl: np.ndarray | None = None

    @classmethod
    def from_logits(cls, logits: np.ndarray, targets: np.ndarray,
                    ref: PositionStats | None = None, topk: int = KL_TOPK) -> PositionStats:
        """Stats of `logits` [T,V]; with `ref` (the reference's stats of the same positions)
        the KL divergence from it, without it this is the reference: its top-k recorded."""
        x = np.asarray(logits, np.float64).reshape(-1, logits.shape[-1])
        finite = np.isfinite(x).all(axis=-1)
        m = x.max(axis=-1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=-1))
        lp = x[np.arange(len(x)), targets] - lse
        top2 = np.partition(x, -2, axis=-1)[:, -2:]
        out = cls(lp, x.argmax(-1).astype(np.int64), (top2[:, 1] - top2[:, 0]).astype(
            np.float32), int((~finite).sum()))
        if ref is None:
            k = min(topk, x.shape[-1])
            ids = np.argpartition(-x, k - 1, axis=-1)[:, :k]
            out.topk_ids = ids.astype(np.int32)
            out.topk_logprob = (np.take_along_axis(x, ids, -1) - lse[:, None]).astype(
                np.float32)
        elif ref.topk_ids is not None:
            q = np.take_along_axis(x, ref.topk_ids.astype(np.int64), -1) - lse[:, None]
            out.kl = bucket_kl(ref.topk_logprob.astype(np.float64), q)
        return out

    def rows(self, start: int, stop: int) -> PositionStats:
        cut = lambda a: None if a is None else a[start:stop]  # noqa: E731
        return PositionStats(self.logprob[start:stop], self.top1[start:stop],
                             self.margin[start:stop], 0, cut(self.topk_ids),
                             cut(self.topk_logprob), cut(self.kl))

    @classmethod
    def concat(cls, parts: list[PositionStats]) -> PositionStats:
        cat = lambda k: (None if getattr(parts[0], k) is None  # noqa: E731
                         else np.concatenate([getattr(p, k) for p in parts]))
        return cls(np.concatenate([p.logprob for p in parts]),
                   np.concatenate([p.top1 for p in parts]),
                   np.concatenate([p.margin for p in parts]), sum(p.nonfinite for p in parts),
                   cat("topk_ids"), cat("topk_logprob"), cat("kl"))


def bucket_kl(p_log: np.ndarray, q_log: np.ndarray) -> np.ndarray:
    """KL(p || q) per row over k tokens plus one bucket for the rest of the vocabulary, from
    the log-probabilities of the same k tokens [N,k] under p and q."""
    p, q = np.exp(p_log), np.exp(q_log)
    p_rest = np.clip(1 - p.sum(-1), 1e-12, 1)
    q_rest = np.clip(1 - q.sum(-1), 1e-12, 1)
    return (p * (p_log - q_log)).sum(-1) + p_rest * (np.log(p_rest) - np.log(q_rest))


def teacher_forced_stats(step, ids: np.ndarray, chunk: int = CHUNK,
                         ref: PositionStats | None = None) -> PositionStats:
    """Feed ids[:-1] (batch 1) through `step(ids [1,T], positions [1,T]) -> logits` in
    chunks that thread the state; score every position against the next id (and, given
    the reference's stats `ref`, the KL divergence from it)."""
    ids = np.asarray(ids, np.int64)
    parts = []
    for start in range(0, len(ids) - 1, chunk):
        stop = min(start + chunk, len(ids) - 1)
        logits = step(ids[None, start:stop], np.arange(start, stop, dtype=np.int64)[None])
        # scored STATS_ROWS positions at a time: from_logits' float64 temporaries of a whole
        # chunk over a 150k vocabulary would be ~0.3 GB each (the same numbers either way)
        for r0 in range(start, stop, STATS_ROWS):
            r1 = min(r0 + STATS_ROWS, stop)
            parts.append(PositionStats.from_logits(
                logits[0, r0 - start:r1 - start], ids[r0 + 1:r1 + 1],
                None if ref is None else ref.rows(r0, r1)))
        del logits
    return PositionStats.concat(parts)


@dataclass
class Heldout:
    """The reference side of the quantized tier, as stored in the artifact."""

    weights_sha256: str  # of model.safetensors: which reference this is
    source: dict  # where the text came from
    ids: np.ndarray  # [N+1] int64
    ref: PositionStats

    def save(self, path: Path) -> None:
        topk = ({} if self.ref.topk_ids is None else
                {"ref_topk_ids": self.ref.topk_ids, "ref_topk_logprob": self.ref.topk_logprob})
        save_arrays(path, {"weights_sha256": self.weights_sha256, "source": self.source},
                    {"ids": self.ids, "ref_logprob": self.ref.logprob,
                     "ref_top1": self.ref.top1, "ref_margin": self.ref.margin, **topk},
                    deflate=True)  # 36 % smaller: it ships in every quantized folder

    @classmethod
    def load(cls, path: Path, vocab_size: int | None = None,
             data: bytes | None = None) -> Heldout:
        """The held-out file at `path`; in an artifact, `data` is its verified bytes
        (read_listed_bytes). The ids are 1-d (in 0..vocab_size-1 when given); the reference
        statistics one per predicted position."""
        with open_arrays(path, f"held-out reference ({HELDOUT_FILE})",
                         "export the artifact again with --quantize", data) as (meta, z):
            bounds = None if vocab_size is None else (0, vocab_size)
            ids = check_array(z, "ids", 1, "i", bounds)
            stats = [check_array(z, name, 1, kind) for name, kind in (
                ("ref_logprob", "f"), ("ref_top1", "i"), ("ref_margin", "f"))]
            if len(ids) < 2 or any(len(a) != len(ids) - 1 for a in stats):
                raise ScredgeError("the held-out reference's arrays do not fit together",
                                   received=f"{len(ids)} ids, statistics of "
                                            f"{[len(a) for a in stats]}",
                                   expected="n >= 2 ids and n - 1 statistics each",
                                   fix="export the artifact again with --quantize")
            if not isinstance(meta.get("weights_sha256"), str):
                raise ScredgeError("the held-out reference's metadata is malformed",
                                   received=repr(meta)[:120],
                                   fix="export the artifact again with --quantize")
            topk = [z[k] if k in z else None for k in ("ref_topk_ids", "ref_topk_logprob")]
            return cls(meta["weights_sha256"], meta.get("source"), ids,
                       PositionStats(*stats, 0, *topk))


@dataclass
class QuantizedReport:
    bits: int
    graph: str  # which graph ran (file)
    positions: int
    ppl_ref: float
    ppl: float
    top1: float  # agreement over decisive positions
    decisive: int
    near_ties: int
    nonfinite: int
    thresholds: QuantizedThresholds
    failures: list[str] = field(default_factory=list)
    precision: str = ""  # what ran, e.g. "int4 weight-only (rtn, block 32)" (for the report)
    backend: str = ""  # "ort" or "trt"
    kl: float | None = None  # mean KL(reference || graph), reference top-k + rest (reported)

    @property
    def ratio(self) -> float:
        return self.ppl / self.ppl_ref

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        status = "PASS" if self.passed else "FAIL: " + "; ".join(self.failures)
        kl = "" if self.kl is None else f", mean KL {self.kl:.4f} (reported)"
        return (f"int{self.bits} {self.graph}: perplexity {self.ppl:.4f} vs reference "
                f"{self.ppl_ref:.4f} (ratio {self.ratio:.4f} <= {self.thresholds.ppl_ratio}), "
                f"top-1 {self.top1:.2%} >= {self.thresholds.top1:.0%} over {self.decisive} "
                f"positions ({self.near_ties} near-ties excluded), {self.nonfinite} non-finite"
                f"{kl} -> {status}")

    def to_json(self) -> dict:
        out = asdict(self)
        out["thresholds"] = asdict(self.thresholds)
        out["ratio"], out["passed"] = self.ratio, self.passed
        return out

    def table(self) -> str:
        head = f"{self.precision}, backend {self.backend}\n" if self.precision else ""
        return head + "quantized tier (SCR_SPEC section 5)\n  " + self.summary()


def compare(heldout: Heldout, got: PositionStats, bits: int, graph: str) -> QuantizedReport:
    t = quantized_thresholds(bits)
    ref = heldout.ref
    if len(got.logprob) != len(ref.logprob):
        raise ScredgeError("held-out positions differ", received=len(got.logprob),
                           expected=len(ref.logprob))
    agree, n = decisive_top1(ref.margin, ref.top1, got.top1, t.margin)
    ppl_ref = float(np.exp(-np.mean(ref.logprob)))
    ppl = float(np.exp(-np.mean(got.logprob))) if not got.nonfinite else float("inf")
    rep = QuantizedReport(bits, graph, len(ref.logprob), ppl_ref, ppl, agree, n,
                          len(ref.logprob) - n, got.nonfinite, t,
                          kl=None if got.kl is None else float(np.mean(got.kl)))
    if got.nonfinite:
        rep.failures.append(f"{got.nonfinite} positions with NaN or Inf logits")
    if not rep.ratio <= t.ppl_ratio:
        rep.failures.append(f"perplexity ratio {rep.ratio:.4f} > {t.ppl_ratio}")
    if agree < t.top1:
        rep.failures.append(f"top-1 {agree:.2%} < {t.top1:.0%}")
    return rep


def check_runner(heldout: Heldout, runner, bits: int, graph: str) -> QuantizedReport:
    """Run `runner` (any backend) teacher-forced over the held-out ids and judge it."""
    decoder = runner.decoder(1)
    try:
        got = teacher_forced_stats(decoder.step, heldout.ids, ref=heldout.ref)
    finally:
        decoder.close()
    return compare(heldout, got, bits, graph)


def run_quantized_parity(artifact, runner, graph: str) -> QuantizedReport:
    """`scredge parity` on a quantized artifact: the stored held-out reference, checked to be
    this artifact's, against `runner`."""
    path = listed_member(artifact.folder, artifact.manifest, HELDOUT_FILE,
                         "held-out reference")
    if path is None:
        raise ScredgeError("no held-out reference in the quantized artifact",
                           received=f"manifest.json does not list {HELDOUT_FILE}",
                           fix="export the artifact again with --quantize")
    heldout = Heldout.load(path, artifact.config.vocab_size, read_listed_bytes(
        artifact.folder, artifact.manifest, HELDOUT_FILE, "held-out reference"))
    actual = artifact.reference_sha256
    if heldout.weights_sha256 != actual:
        raise ScredgeError("the held-out reference was recorded for another model",
                           received=f"weights sha256 {heldout.weights_sha256[:16]}...",
                           expected=f"this folder's, {actual[:16]}...",
                           fix="export the artifact again")
    return check_runner(heldout, runner, graph_bits(artifact.quantization, graph), graph)


def graph_bits(quantization: dict, graph: str) -> int:
    """The tier a graph is judged by: its lowest precision (SCR_SPEC section 4, v3; a plan
    may differ per graph), else the artifact's bits (v2 artifacts)."""
    for entry in quantization.get("graphs", {}).values():
        if entry.get("file") == graph and "bits" in entry:
            return int(entry["bits"])
    return int(quantization["bits"])
