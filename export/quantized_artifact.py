"""The quantized half of `export_artifact`: both graphs written, the held-out reference
recorded, and each graph run by onnxruntime against the quantized tier of SCR_SPEC
section 5. An artifact that misses the tier is refused (nothing is written)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scredge.artifact import sha256_file
from scredge.contract import (
    BACKENDS,
    CACHE_SHARED,
    HELDOUT_FILE,
    ONNX_DATA_FILE,
    ONNX_FILE,
    TRT_ONNX_FILE,
    WEIGHTS_FILE,
)
from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.export.heldout import record_heldout
from scredge.export.mixed import (
    PROMOTE_STEPS,
    LazyWeights,
    Plan,
    candidate_plans,
    matrix_costs,
)
from scredge.export.ort_fusions import FusionCounts
from scredge.export.plan_graphs import (
    SHARED_EMBEDDING,
    MatrixNumbers,
    config_section,
    ort_form,
    ort_grids,
    prepared_base,
    quantize_graphs,
    trt_form,
    trt_grids,
)
from scredge.export.qgrid import dequantize
from scredge.export.quant_store import FloatSource, TensorStore
from scredge.export.quantize import HEAD, QuantSpec
from scredge.quantized_tier import QuantizedReport, check_runner
from scredge.tiers import quantized_thresholds
from scredge.tokenizer_files import TokenizerFiles

EXTERNAL_DATA_BYTES = 1 << 30


def ort_session(path: Path, dequantize_form: bool = False):
    """A CPU onnxruntime session for a quantized graph (weight-only numerics)."""
    from scredge.runtime.loaders import DEQUANTIZE_FORM_ENTRIES
    from scredge.runtime.loaders import ort_session as make_session

    return make_session(path, "cpu",
                        config_entries=DEQUANTIZE_FORM_ENTRIES if dequantize_form else None)


def _save(proto, path: Path) -> None:
    onnx = require("onnx")
    large = proto.ByteSize() > EXTERNAL_DATA_BYTES
    onnx.save_model(proto, str(path), save_as_external_data=large,
                    all_tensors_to_one_file=True,
                    location=ONNX_DATA_FILE if path.name == ONNX_FILE else path.name + ".data")


def check_graph(path: Path, model, heldout, bits: int, backend: str) -> QuantizedReport:
    """One graph run teacher-forced over the held-out text, judged by the int`bits` tier."""
    from scredge.runtime.runners.ort_runner import OrtRunner

    runner = OrtRunner(ort_session(path, dequantize_form=backend == "trt"), model.config,
                       np.float32)
    return check_runner(heldout, runner, bits, path.name)


@dataclass
class Chosen:
    """The plan a graph holds, its tier report, and the plans tried before it."""

    plan: Plan
    report: QuantizedReport
    method: str
    fusions: FusionCounts | None = None
    tried: list[tuple[Plan, QuantizedReport]] = field(default_factory=list)
    embedding: str = "float"  # or how the graph's embedding reads a quantized table


def refuse(name: str, spec: QuantSpec, tried: list[tuple[Plan, QuantizedReport]]):
    """No plan passed: nothing is written; the message names the best plan tried."""
    plan, rep = min(tried, key=lambda t: (bool(t[1].failures and t[1].nonfinite), t[1].ratio,
                                          -t[1].top1))
    raise ScredgeError(
        f"quantized export refused: {name} misses the int{rep.bits} tier",
        received=f"{len(tried)} plan(s) tried; the best: {plan.summary()}: perplexity ratio "
                 f"{rep.ratio:.4f}, top-1 {rep.top1:.2%} ({'; '.join(rep.failures)})",
        expected="SCR_SPEC section 5, quantized tier",
        fix="nothing was written; try --quantize int8, a calibration text like the model's "
            "use (--calibration), a smaller --block-size"
            + ("" if spec.mixed else ", or --mixed-precision auto"))


class PlanSearch:
    """The plans of one export (export/mixed.py) tried in turn on the real graphs: the
    uniform int4 plan first, then (with spec.mixed) more and more matrices promoted to int8
    in order of measured sensitivity, until a graph passes the quantized tier."""

    def __init__(self, tmp: Path, float_proto, model, spec: QuantSpec, heldout,
                 hessians: dict | None, cal_ids: np.ndarray | None, log, cache: str = "concat",
                 store: TensorStore | None = None, targets: tuple[str, ...] = BACKENDS):
        self.tmp, self.model, self.spec, self.heldout, self.log = tmp, model, spec, heldout, log
        self.cache = cache
        self.store = store or TensorStore(FloatSource(tmp, {}))
        self.base = prepared_base(float_proto, self.store.source)
        self.numbers = MatrixNumbers(self.base, spec.block_size, hessians,
                                     self.store.source.read)
        self.cal_ids, self._costs, self.targets = cal_ids, {}, targets

    def plans(self, backend: str) -> Iterator[Plan]:
        uniform = Plan.uniform(f"int{self.spec.bits}", self.numbers.sizes)
        yield uniform
        if not self.spec.mixed:
            return
        costs = self._costs_of(backend)
        uniform.estimate = sum(c.sensitivity["int4"] for c in costs)
        yield from candidate_plans(costs, PROMOTE_STEPS)

    def _costs_of(self, backend: str) -> list:
        """Every matrix's sensitivities on `backend`'s grids. The Fisher information is
        measured in FISHER_PASSES passes, each over a share of the matrices, and turned
        into the costs of every backend still to be planned, then dropped (it is as large
        as the weights measured); the numbers are computed, not kept."""
        if backend not in self._costs:
            import time

            from scredge.export.mixed import fisher_diagonals, fisher_groups

            self.log("measuring each matrix's sensitivity on the calibration text ...")
            self.numbers.forget()  # not held under the Fisher sums; remade for the next plan
            b, costs = self.spec.block_size, {}
            for group in fisher_groups(self.numbers.sizes):
                t0 = time.perf_counter()
                fisher = fisher_diagonals(self.model, self.cal_ids, names=group)
                _hand_back(self.model)
                t1 = time.perf_counter()
                for other in dict.fromkeys((backend, *self.targets)):  # each backend once
                    grids = ort_grids(self.spec) if other == "ort" else trt_grids
                    costs.setdefault(other, []).extend(matrix_costs(
                        LazyWeights({m: self.numbers.weight[m] for m in group}), fisher,
                        lambda m, p, g=grids: dequantize(*self.numbers.compute(m, g(m, p)),
                                                         b)))
                del fisher
                self.log(f"  {len(group)} matrices: Fisher information {t1 - t0:.1f} s, "
                         f"sensitivities {time.perf_counter() - t1:.1f} s")
            order = {m: k for k, m in enumerate(self.numbers.names)}
            for other, found in costs.items():
                self._costs[other] = sorted(found, key=lambda c: order[c.name])
        return self._costs[backend]

    def choose(self, backend: str) -> Chosen:
        """The first plan whose graph passes. After a failure, plans whose estimate, scaled
        by the last failure's measured / estimated loss increase, still predicts a
        perplexity ratio over the tier's are skipped (logged), not built; the most promoted
        one is tried if nothing else is left, and once a plan passes, the plans skipped
        just before it are tried by bisection (the least promoted that passes is kept)."""
        name = ONNX_FILE if backend == "ort" else TRT_ONNX_FILE
        tried, skipped = [], []
        for plan in self.plans(backend):
            limit = math.log(quantized_thresholds(plan.bits).ppl_ratio)
            scale = _scale(tried[-1]) if tried else None
            if scale is not None and plan.estimate * scale > limit:
                self.log(f"  {backend} plan skipped (predicted ratio "
                         f"{math.exp(plan.estimate * scale):.3f}): {plan.summary()}")
                skipped.append(plan)
                continue
            rep = self.check(backend, plan, name)
            if rep.passed:
                return self._refine(backend, name, skipped, Chosen(
                    plan, rep, self.spec.method, self._fusions, tried, self._embedding))
            tried.append((plan, rep))
            skipped = []  # less promoted than a plan that failed
        if skipped:
            plan = skipped.pop()
            rep = self.check(backend, plan, name)
            if rep.passed:
                return self._refine(backend, name, skipped, Chosen(
                    plan, rep, self.spec.method, self._fusions, tried, self._embedding))
            tried.append((plan, rep))
        refuse(name, self.spec, tried)

    def done(self, backend: str) -> None:
        """`backend`'s graph is final: its float tensors serve the next graph too, and the
        numbers kept for its plans go (the next graph's grids are its own)."""
        self.store.share(self.tmp / (ONNX_FILE if backend == "ort" else TRT_ONNX_FILE))
        self.numbers.forget()

    def _refine(self, backend: str, name: str, skipped: list[Plan], best: Chosen) -> Chosen:
        """Bisect the skipped plans (least to most promoted, all below `best`'s) for the
        least promoted that passes; its graph is the one left written."""
        lo, hi, last_passed = 0, len(skipped), True
        while lo < hi:
            mid = (lo + hi) // 2
            rep = self.check(backend, skipped[mid], name)
            last_passed = rep.passed
            if rep.passed:
                best = Chosen(skipped[mid], rep, best.method, self._fusions, best.tried,
                              self._embedding)
                hi = mid
            else:
                best.tried.append((skipped[mid], rep))
                lo = mid + 1
        if not last_passed:  # rebuild the kept plan's graph (the same numbers, cached)
            self.build(backend, best.plan, name)
            self.log(f"  {backend} kept: {best.plan.summary()}")
        return best

    def build(self, backend: str, plan: Plan, name: str) -> None:
        """Build and save the graph of `plan`."""
        self._fusions = None
        if backend == "ort":
            proto, self._fusions = ort_form(self.base, plan.precision, self.spec,
                                            self.numbers, self.model.config,
                                            self.store.source)
            if self.cache == CACHE_SHARED:
                from scredge.export.ort_shared_cache import to_shared_cache

                to_shared_cache(proto, self.model.config)
        else:
            proto = trt_form(self.base, plan.precision, self.spec, self.numbers,
                             self.store.source)
        self._embedding = next((f"{SHARED_EMBEDDING}, the head's int{plan.precision[HEAD][3:]} "
                                "table" for n in proto.graph.node
                                if n.op_type == SHARED_EMBEDDING), "float")
        self.store.save(proto, self.tmp / name)
        del proto  # the session reads the files; the graph's numbers are not held twice

    def check(self, backend: str, plan: Plan, name: str) -> QuantizedReport:
        """Build and save the graph of `plan`, and run the tier on it."""
        self.build(backend, plan, name)
        rep = check_graph(self.tmp / name, self.model, self.heldout, plan.bits, backend)
        _hand_back(self.model)  # the session's memory and the reference's pages it read
        self.log(f"  {backend} plan: {plan.summary()}\n    {rep.summary()}")
        return rep


def _hand_back(model) -> None:
    """The reference's mapped pages and the C heap's free pages back to the system after a
    pass over the reference: the sessions that judge the plans come next (issue 27)."""
    import gc

    from scredge.export.stream_write import trim_heap
    from scredge.ref.mapped import release_all

    release_all(model)
    gc.collect()  # a session caught in a reference cycle goes now, not at some later pass
    trim_heap()


def _scale(failed: tuple[Plan, QuantizedReport]) -> float | None:
    """Measured / estimated loss increase of a failed plan (None when not measurable)."""
    plan, rep = failed
    if plan.estimate > 0 and math.isfinite(rep.ratio) and rep.ratio > 1:
        return math.log(rep.ratio) / plan.estimate
    return None


def calibrate(model, spec: QuantSpec, tokenizer: TokenizerFiles | None,
              log: Callable[[str], None]):
    """The calibration text (the given file, or the built-in one) in the model's tokens,
    for an export that calibrates (GPTQ, mixed precision); None otherwise."""
    if not spec.calibrated:
        return None
    from scredge.export.gptq import Calibration

    size = model.config.vocab_size
    cal = (Calibration.builtin(tokenizer, size) if spec.calibration is None
           else Calibration.load(spec.calibration, tokenizer, size))
    log(f"calibration text: {cal.source['file']} ({cal.source['tokens']} tokens)")
    return cal


def quantize_artifact(tmp: Path, float_proto, model, spec: QuantSpec,
                      log: Callable[[str], None],
                      tokenizer: TokenizerFiles | None = None,
                      targets: tuple[str, ...] = BACKENDS, cache: str = "concat") -> dict:
    """Replace tmp/model.onnx (the verified float graph) with the onnxruntime form, add the
    TensorRT form and the held-out reference; returns config.json's `quantization`.
    `tokenizer` encodes the calibration and held-out texts (bytes without one); `targets`:
    the backends whose form is written (--target). Each form is the first plan
    (export/mixed.py) whose graph passes the quantized tier; none: refused. `cache`
    "shared": the onnxruntime form gets the in-place KV cache (export/ort_shared_cache.py)."""
    from scredge.ref.mapped import map_onto_file

    # a reference held in ordinary memory (a dequantized GGUF) reads the checkpoint just
    # written instead, so its pages go back between the passes below like a mapped one's
    if map_onto_file(model, tmp / WEIGHTS_FILE):
        log(f"  the reference now reads {WEIGHTS_FILE} (mapped: its pages are handed back "
            "between passes)")
    _hand_back(model)  # what the float graph's verification left (its session, its heap)
    cal = calibrate(model, spec, tokenizer, log)
    hessians = None
    if spec.method == "gptq":
        from scredge.export.gptq import by_matrix, input_hessians

        log("running the reference over the calibration text (GPTQ's Hessians) ...")
        hessians = by_matrix(input_hessians(model, cal.ids))
    log("recording the float32 reference over the held-out text ...")
    heldout = record_heldout(model, sha256_file(tmp / WEIGHTS_FILE), tokenizer=tokenizer)
    _hand_back(model)
    if spec.method == "hqq":  # onnxruntime's quantizer takes the whole graph
        if float_proto is None:
            float_proto = require("onnx").load(str(tmp / ONNX_FILE))
        for stale in (tmp / ONNX_DATA_FILE, tmp / ONNX_FILE):  # in memory now
            stale.unlink(missing_ok=True)
        chosen = _uniform_hqq(tmp, float_proto, model, spec, heldout, log, targets, cache)
    else:
        chosen = _search(tmp, float_proto, model, spec, heldout, hessians, cal, log, targets,
                         cache)
    heldout.save(tmp / HELDOUT_FILE)
    section = config_section(spec, chosen, ONNX_FILE, None if cal is None else cal.source)
    if cache == CACHE_SHARED:
        from scredge.export.ort_shared_cache import graph_entries

        shared = graph_entries()
        for backend, entry in section["graphs"].items():
            entry.update(shared[backend])
    section["heldout"] = {"file": HELDOUT_FILE, **heldout.source}
    return section


def _search(tmp: Path, float_proto, model, spec: QuantSpec, heldout, hessians, cal, log,
            targets: tuple[str, ...], cache: str) -> dict:
    """Each target's plan chosen (PlanSearch). A float graph written with external data
    (float_proto None) is read one weight at a time from that data (export/quant_store.py);
    one held in memory is quantized from there."""
    if float_proto is None:
        float_proto, source = FloatSource.open(tmp, ONNX_FILE, ONNX_DATA_FILE)
    else:
        source = FloatSource(tmp, {})
        for stale in (tmp / ONNX_DATA_FILE, tmp / ONNX_FILE):  # in memory now
            stale.unlink(missing_ok=True)
    try:
        search = PlanSearch(tmp, float_proto, model, spec, heldout, hessians,
                            None if cal is None else cal.ids, log, cache, TensorStore(source),
                            targets)
        del float_proto
        chosen = {}
        for backend in (b for b in ("ort", "trt") if b in targets):
            chosen[backend] = search.choose(backend)
            search.done(backend)
        return chosen
    finally:
        source.close()


def _uniform_hqq(tmp: Path, float_proto, model, spec: QuantSpec, heldout, log,
                 targets: tuple[str, ...] = BACKENDS, cache: str = "concat") -> dict:
    """HQQ: onnxruntime's own, one uniform plan (its TensorRT form rtn), judged as is."""
    log(f"quantizing weights to int{spec.bits} (hqq, block {spec.block_size}) with "
        "onnxruntime's MatMulNBitsQuantizer ...")
    graphs = quantize_graphs(float_proto, spec, model.config)
    if cache == CACHE_SHARED:
        from scredge.export.ort_shared_cache import to_shared_cache

        to_shared_cache(graphs.ort, model.config)
    plan = Plan({m: f"int{spec.bits}" for m in graphs.matrices})
    out = {}
    for backend, proto, name in (("ort", graphs.ort, ONNX_FILE),
                                 ("trt", graphs.trt, TRT_ONNX_FILE)):
        if backend not in targets:
            continue
        _save(proto, tmp / name)
        rep = check_graph(tmp / name, model, heldout, spec.bits, backend)
        log("  " + rep.summary())
        if not rep.passed:
            refuse(name, spec, [(plan, rep)])
        method = "hqq" if backend == "ort" else "rtn"
        out[backend] = Chosen(plan, rep, method, graphs.fusions if backend == "ort" else None)
    return out
