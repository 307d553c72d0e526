"""Mixed precision chosen by measurement (SCR_SPEC v3, section 4).

Each weight matrix of the reference (q, k, v, o, gate, up, down, SCR `proj`, the output
head) gets a sensitivity: the calibration loss it would add if it alone were quantized,
estimated to second order with the empirical Fisher information of the calibration text,

    s(m, p) = 1/2 * sum_ij F_ij (W_ij - Q_p(W)_ij)^2,   F = E[(d loss / d W)^2],

where Q_p is the matrix quantized at precision p (int4 or int8, on the grid the graph will
hold) and the expectation runs over calibration sequences of `FISHER_SEQ` tokens. One
forward and backward pass per sequence gives every matrix's F at once; measuring each
matrix's loss directly (one pass per matrix) would cost about 200 passes on a 135M model.

The plan promotes matrices from int4 to int8 in order of sensitivity removed per bit
added, `(s(m, int4) - s(m, int8)) / (4 * weights(m))`; candidate plans are prefixes of that
order, at growing fractions of the weights promoted (`PROMOTE_STEPS`). The export tries them
in turn and keeps the first whose graph passes the quantized tier (the tier, not this
estimate, decides); if none passes, the refusal names the best plan tried.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.export.quantize import HEAD, matrix_name

PRECISION_BITS = {"int4": 4, "int8": 8, "float": 32}
# fractions of the weights promoted from int4 to int8, tried in turn after the uniform int4
# plan (promoting everything would make an int8 artifact: ask for --quantize int8)
PROMOTE_STEPS = (0.05, 0.10, 0.15, 0.20, 0.25, 0.35, 0.50, 0.75)
FISHER_SEQ = 128  # tokens per calibration sequence (one squared gradient each)
FISHER_TOKENS = 2048  # calibration tokens the Fisher information is averaged over
# the Fisher sums are as large as the matrices: they are gathered in this many passes over
# the calibration text, each for a run of consecutive matrices holding about an equal share
# of the weights, so only that share's sums are held at a time (the same numbers: each
# weight's squared gradients are summed in the same order whatever else requires grad)
FISHER_PASSES = 2


def reference_matrices(model) -> dict[str, object]:
    """Matrix name -> its weight [N, K] (torch, out x in) in the reference model; the head
    is the output weight (the embedding when tied)."""
    torch = require("torch")
    from scredge.export.graph import scope_name

    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            out[matrix_name(scope_name(name))] = mod.weight
    out[HEAD] = model.output_weight
    return out


def untied_copy(model):
    """A float32 copy of the reference whose output head is its own parameter (a tied
    head's quantization or gradient must not touch the embedding)."""
    import copy

    torch = require("torch")
    model = copy.deepcopy(model).float()
    head = torch.nn.Parameter(model.output_weight.detach().clone())
    cls = type(model)
    model.__class__ = type(cls.__name__, (cls,), {"output_weight": property(lambda s: head)})
    return model


@contextmanager
def _untied(model):
    """`model` with its output head a parameter of its own that shares the table's storage
    (no copy: the Fisher pass only reads weights), every parameter frozen but the matrices;
    restored on exit."""
    torch = require("torch")
    frozen = {p: p.requires_grad for p in model.parameters()}
    head = torch.nn.Parameter(model.output_weight.detach(), requires_grad=False)
    cls = type(model)
    model.__class__ = type(cls.__name__, (cls,), {"output_weight": property(lambda s: head)})
    try:
        for p in frozen:
            p.requires_grad_(False)
        yield model
    finally:
        model.__class__ = cls
        for p, flag in frozen.items():
            p.requires_grad_(flag)
            p.grad = None


def fisher_groups(sizes: dict[str, int], passes: int = FISHER_PASSES) -> list[list[str]]:
    """The matrices (`sizes`: name -> weights, in model order) cut into at most `passes`
    runs of consecutive matrices of about equal weight (each run one Fisher pass)."""
    total, groups, acc = sum(sizes.values()), [[]], 0
    for name, n in sizes.items():
        if groups[-1] and acc >= total * len(groups) / passes:
            groups.append([])
        groups[-1].append(name)
        acc += n
    return groups


def fisher_diagonals(model, ids: np.ndarray, tokens: int = FISHER_TOKENS,
                     seq: int = FISHER_SEQ,
                     names: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """Per matrix (those in `names`, default all), the empirical Fisher information of
    each weight ([N, K] float32): the squared gradient of a sequence's mean next-token
    loss, averaged over calibration sequences and times `seq`. A tied head gets its own
    gradient (a parameter sharing the table's storage stands in for it). Each gradient is
    squared into its sum as soon as backward makes it and then freed: one matrix's gradient
    is held at a time, besides the sums (as large as the matrices asked for) and the model
    (not copied); backward stops below the lowest matrix asked for."""
    from scredge.export.stream_write import trim_heap

    torch = require("torch")
    with _untied(model) as m:
        mats = reference_matrices(m)
        if names is not None:
            mats = {k: mats[k] for k in names}
        sums = {k: torch.zeros(w.shape, dtype=torch.float32) for k, w in mats.items()}
        def square_into(total):
            def hook(p) -> None:
                total.addcmul_(p.grad, p.grad)
                p.grad = None
            return hook

        hooks = []
        for k, w in mats.items():
            w.requires_grad_(True)
            hooks.append(w.register_post_accumulate_grad_hook(square_into(sums[k])))
        n = min(len(ids) - 1, tokens) // seq
        try:
            for i in range(n):
                x = torch.from_numpy(np.ascontiguousarray(ids[i * seq:(i + 1) * seq + 1]))
                logits, _ = m(x[None, :-1], torch.arange(seq)[None])
                torch.nn.functional.cross_entropy(logits[0], x[1:]).backward()
                del logits
                trim_heap()  # this sequence's activations and gradients, not under the next
        finally:
            for h in hooks:
                h.remove()
    # a sequence's mean gradient over `seq` nearly independent tokens has about 1/seq of a
    # token's gradient variance: scaled back to the per-token Fisher information
    return {k: v.mul_(seq / max(n, 1)).numpy() for k, v in sums.items()}


class LazyWeights(Mapping):
    """Matrix name -> its weight [N, K], read when asked for (one matrix in memory at a
    time), from `loaders` (name -> a function returning the weight)."""

    def __init__(self, loaders: dict[str, Callable[[], np.ndarray]]):
        self.loaders = loaders

    def __getitem__(self, name: str) -> np.ndarray:
        return self.loaders[name]()

    def __iter__(self):
        return iter(self.loaders)

    def __len__(self) -> int:
        return len(self.loaders)


@dataclass
class MatrixCost:
    name: str
    weights: int
    sensitivity: dict[str, float]  # precision -> estimated calibration loss increase (nats)

    @property
    def gain_per_bit(self) -> float:
        return (self.sensitivity["int4"] - self.sensitivity["int8"]) / (4 * self.weights)


def matrix_costs(weights: dict[str, np.ndarray], fisher: dict[str, np.ndarray],
                 quantized: Callable[[str, str], np.ndarray]) -> list[MatrixCost]:
    """Every matrix's estimated sensitivity at int4 and int8; `quantized(name, precision)`
    is the matrix [N, K] as the graph would hold it (dequantized)."""
    missing = sorted(set(weights) - set(fisher))
    if missing:
        raise ScredgeError("no sensitivity for some weight matrices", received=missing[:4],
                           fix="report this with the model config used")
    out = []
    for name, w in weights.items():
        f = fisher[name]
        sens = {p: 0.5 * float((f * (w - quantized(name, p)) ** 2).sum())
                for p in ("int4", "int8")}
        out.append(MatrixCost(name, int(w.size), sens))
    return out


@dataclass
class Plan:
    """Per matrix its precision, and each matrix's number of weights."""

    precision: dict[str, str]
    sizes: dict[str, int]
    estimate: float = 0.0  # estimated calibration loss increase (nats per token)

    @classmethod
    def uniform(cls, precision: str, sizes: dict[str, int]) -> Plan:
        return cls({n: precision for n in sizes}, dict(sizes))

    @property
    def bits(self) -> int:
        """The lowest precision present: the tier the plan is judged by (SCR_SPEC 4)."""
        return min(PRECISION_BITS[p] for p in self.precision.values())

    def fraction(self, precision: str, names: Callable[[str], bool] = lambda n: True) -> float:
        """Fraction of the weights of the matrices `names` selects held at `precision`."""
        chosen = [n for n in self.precision if names(n)]
        total = sum(self.sizes[n] for n in chosen)
        return sum(self.sizes[n] for n in chosen if self.precision[n] == precision) / max(
            total, 1)

    def mean_bits(self) -> float:
        """Mean bits per weight over the planned matrices (the integers; scales and zero
        points not counted)."""
        total = sum(self.sizes.values())
        return sum(PRECISION_BITS[p] * self.sizes[n] for n, p in self.precision.items()) / total

    def summary(self) -> str:
        counts = {p: sum(v == p for v in self.precision.values()) for p in PRECISION_BITS}
        promoted = sorted(n for n, p in self.precision.items() if p != "int4")
        shown = ", ".join(promoted[:4]) + (f" and {len(promoted) - 4} more"
                                           if len(promoted) > 4 else "")
        return (f"{counts['int4']} int4 / {counts['int8']} int8 / {counts['float']} float "
                f"matrices, {self.fraction('int4', is_projection):.1%} of projection weights "
                f"in int4, {self.mean_bits():.2f} bits per weight"
                + (f" (not int4: {shown})" if promoted and counts["int4"] else ""))


def is_projection(name: str) -> bool:
    """q, k, v, o, gate, up, down (and SCR `proj`): every planned matrix but the head."""
    return name != HEAD


def candidate_plans(costs: list[MatrixCost],
                    steps: tuple[float, ...] = PROMOTE_STEPS) -> list[Plan]:
    """The plans to try, in order: prefixes of the promotion order (sensitivity removed per
    bit added, highest first) at `steps` fractions of the weights (duplicates, and a plan
    left with no int4 matrix, dropped)."""
    order = sorted(costs, key=lambda c: c.gain_per_bit, reverse=True)
    sizes = {c.name: c.weights for c in costs}
    total = sum(sizes.values())
    plans, seen = [], set()
    for frac in steps:
        promoted, acc = set(), 0
        for c in order:
            if acc >= frac * total:
                break
            promoted.add(c.name)
            acc += c.weights
        key = frozenset(promoted)
        if key in seen or len(key) == len(costs):  # all int8: not an int4 plan
            continue
        seen.add(key)
        prec = {c.name: "int8" if c.name in promoted else "int4" for c in costs}
        plans.append(Plan(prec, sizes, sum(c.sensitivity[prec[c.name]] for c in costs)))
    return plans
