"""Mixed precision chosen by measurement (export/mixed.py, the plan search in
export/quantized_artifact.py) and the integer grids (export/qgrid.py).

Oracles: the grids' defining formulas (a Q4_1-style block is held exactly by the float
zero-point grid; onnxruntime's own asymmetric quantizer for the integer one), the measured
calibration loss when one matrix alone is quantized (the Fisher estimate must rank the
matrices as that measurement does), the promotion order's definition (gain per bit), and
the tier's verdict (the search keeps the first plan whose graph passes; none: refused with
the best plan named, nothing written)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx_graphs import export_graph_stand_in, matmul_model

from scredge.errors import ScredgeError
from scredge.export import pipeline, quantized_artifact
from scredge.export.mixed import (
    MatrixCost,
    Plan,
    candidate_plans,
    fisher_diagonals,
    fisher_groups,
    reference_matrices,
    untied_copy,
)
from scredge.export.qgrid import Grid, dequantize, pack_weights, pack_zero_points, rtn
from scredge.export.quantize import QuantSpec

K, N, BLOCK = 128, 24, 32


def test_float_zero_points_hold_a_four_bit_min_max_block_exactly():
    """A block that is d * q + m with q in 0..15 using both ends (GGUF's Q4_1) comes back
    exactly from asym_float; the symmetric grid does not hold it."""
    rng = np.random.default_rng(0)
    d = rng.uniform(0.01, 0.1, (N, K // BLOCK))
    m = rng.normal(size=(N, K // BLOCK))
    q = rng.integers(0, 16, (N, K))
    q[:, ::BLOCK], q[:, 1::BLOCK] = 0, 15
    w = (q * np.repeat(d, BLOCK, 1) + np.repeat(m, BLOCK, 1)).astype(np.float32)
    back = dequantize(*rtn(w, Grid(4, "asym_float"), BLOCK), BLOCK)
    np.testing.assert_allclose(back, w, atol=1e-5)
    assert np.abs(dequantize(*rtn(w, Grid(4, "sym"), BLOCK), BLOCK) - w).max() > 1e-3


def test_integer_zero_points_are_onnxruntimes_asymmetric_quantization():
    """Oracle: onnxruntime's MatMulNBitsQuantizer with is_symmetric=False on the same
    weight: the same packed integers, scales and zero points."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    w = np.random.default_rng(1).normal(size=(K, N)).astype(np.float32)  # [K,N] as in a graph
    model = matmul_model(w)
    quantizer = mnq.MatMulNBitsQuantizer(model, nodes_to_include=["mm"], algo_config=(
        mnq.DefaultWeightOnlyQuantConfig(block_size=BLOCK, is_symmetric=False, bits=4)))
    quantizer.process()
    node = next(n for n in quantizer.model.model.graph.node if n.op_type == "MatMulNBits")
    inits = {i.name: numpy_helper.to_array(i) for i in quantizer.model.model.graph.initializer}
    q, s, z = rtn(w.T, Grid(4, "asym"), BLOCK)
    assert np.array_equal(pack_weights(q, 4, BLOCK).ravel(), inits[node.input[1]].ravel())
    np.testing.assert_allclose(s.ravel(), inits[node.input[2]].ravel(), rtol=1e-6)
    assert np.array_equal(pack_zero_points(z, Grid(4, "asym")), inits[node.input[3]].ravel())


def _costs():
    # gain per bit: a 5e-4, b 1e-3 (highest), c 2.5e-4, d 1e-4
    spec = {"a": (100, 0.2), "b": (100, 0.4), "c": (200, 0.2), "d": (600, 0.24)}
    return [MatrixCost(n, w, {"int4": s, "int8": 0.0}) for n, (w, s) in spec.items()]


def test_plans_promote_the_highest_gain_per_bit_first():
    """Oracle: the definition. Prefixes of the order b, a, c, d at growing fractions of
    the weights; no duplicate plans; every plan keeps int4 (judged by the int4 tier): the
    step that would promote everything is dropped."""
    plans = candidate_plans(_costs(), (0.05, 0.1, 0.15, 0.2, 0.4, 0.5))
    promoted = [sorted(n for n, p in plan.precision.items() if p == "int8") for plan in plans]
    assert promoted == [["b"], ["a", "b"], ["a", "b", "c"]]
    assert all(plan.bits == 4 for plan in plans)
    assert plans[0].estimate == pytest.approx(0.2 + 0.2 + 0.24)
    assert plans[1].mean_bits() == pytest.approx((4 * 800 + 8 * 200) / 1000)
    assert plans[1].fraction("int4") == pytest.approx(0.8)
    assert Plan.uniform("int4", {"a": 1}).summary().startswith("1 int4 / 0 int8 / 0 float")


def test_fisher_in_groups_equals_fisher_whole(tiny_opset21):
    """Oracle: fisher_diagonals over every matrix at once; each group's pass gives the same
    numbers, bit for bit (export/mixed.py FISHER_PASSES)."""
    from scredge.export.heldout import training_text

    model, _ = tiny_opset21
    ids = np.frombuffer(training_text()[-5000:], np.uint8).astype(np.int64)
    whole = fisher_diagonals(model, ids, tokens=256)
    sizes = {k: v.numel() for k, v in reference_matrices(model).items()}
    groups = fisher_groups(sizes, 2)
    assert len(groups) == 2 and sum(groups, []) == list(sizes)
    parts = {}
    for group in groups:
        parts.update(fisher_diagonals(model, ids, tokens=256, names=group))
    assert parts.keys() == whole.keys()
    assert all(np.array_equal(parts[k], whole[k]) for k in whole)


@pytest.fixture(scope="module")
def tiny_fisher(tiny_opset21):
    from scredge.export.heldout import training_text

    model, _ = tiny_opset21
    ids = np.frombuffer(training_text()[-20000:], np.uint8).astype(np.int64)
    return model, ids, fisher_diagonals(model, ids, tokens=1024)


@pytest.mark.slow
def test_fisher_estimate_ranks_matrices_as_the_measured_loss_does(tiny_fisher):
    """Oracle: the calibration loss measured with one matrix alone quantized to symmetric
    int4 (a forward pass per matrix, over the 1,024 tokens the estimate used). The
    second-order estimate's Spearman rank correlation with it over the 33 matrices is at
    least 0.6 (measured 0.69), and the estimate's total is within a factor of 3 of the
    summed measured increases (measured 0.54)."""
    import torch

    model, ids, fisher = tiny_fisher
    x = torch.from_numpy(ids[:1025])

    def loss(m) -> float:
        with torch.no_grad():
            logits, _ = m(x[None, :-1], torch.arange(1024)[None])
            return float(torch.nn.functional.cross_entropy(logits[0], x[1:]))

    probe = untied_copy(model)
    base = loss(probe)
    measured, estimated = [], []
    for name, w in reference_matrices(probe).items():
        orig = w.detach().clone()
        wq = dequantize(*rtn(orig.numpy(), Grid(4, "sym"), 32), 32)
        with torch.no_grad():
            w.copy_(torch.from_numpy(wq))
            measured.append(loss(probe) - base)
            w.copy_(orig)
        estimated.append(0.5 * float((fisher[name] * (orig.numpy() - wq) ** 2).sum()))
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    rho = np.corrcoef(rank(measured), rank(estimated))[0, 1]
    assert len(measured) == 33 and rho >= 0.6, rho
    assert 1 / 3 < sum(estimated) / sum(measured) < 3


def test_the_search_keeps_the_first_plan_the_tier_passes(tiny_opset21, tmp_path,
                                                         monkeypatch):
    """Oracle: the verdict. With a verdict that fails every graph holding no int8 matrix,
    the uniform int4 plan is refused and the next plan (the matrices of highest measured
    gain per bit promoted) is kept; config.json records per matrix bits / block / symmetry
    / method, the mean bits per weight, and the plans tried; the tied embedding reads the
    quantized head's table (GatherBlockQuantized) in the onnxruntime form."""
    model, proto = tiny_opset21
    monkeypatch.setattr(pipeline, "export_graph", export_graph_stand_in(proto))
    record = quantized_artifact.record_heldout
    monkeypatch.setattr(quantized_artifact, "record_heldout",
                        lambda m, sha, tokenizer: record(m, sha, 512, tokenizer))
    real = quantized_artifact.check_graph

    def verdict(path, model, heldout, bits, backend):
        rep = real(path, model, heldout, bits, backend)
        g = onnx.load(str(path), load_external_data=False)
        if not any(a.name == "bits" and a.i == 8 for n in g.graph.node for a in n.attribute) \
                and not any(i.data_type == onnx.TensorProto.INT8 for i in g.graph.initializer):
            rep.failures.append("no int8 matrix (test verdict)")
        return rep

    monkeypatch.setattr(quantized_artifact, "check_graph", verdict)
    spec = QuantSpec(4, method="rtn", mixed=True, quantize_embedding=True)
    folder = pipeline.export_artifact(model, tmp_path / "a", quantize=spec)
    q = json.loads((folder / "config.json").read_text())["quantization"]
    # the tied embedding reads the head's quantized table in the onnxruntime form only
    assert q["graphs"]["ort"]["embedding"].startswith("GatherBlockQuantized")
    assert q["graphs"]["trt"]["embedding"] == "float"
    ort_form = onnx.load(str(folder / "model.onnx"))
    assert "GatherBlockQuantized" in {n.op_type for n in ort_form.graph.node}
    assert not any(n.op_type == "Gather" and n.input[0] in
                   {i.name for i in ort_form.graph.initializer} for n in ort_form.graph.node)
    for backend, symmetric in (("ort", False), ("trt", True)):
        g = q["graphs"][backend]
        assert g["plans_tried"] == 2 and g["bits"] == 4
        recs = g["matrices"]
        int8 = [m for m, r in recs.items() if r["bits"] == 8]
        assert int8 and len(recs) == 33
        assert all(r["block_size"] == 32 and r["method"] == "rtn" for r in recs.values())
        assert {r["symmetric"] for r in recs.values() if r["bits"] == 4} == {symmetric}
        assert 4 < g["mean_bits_per_weight"] < 8
    assert q["mixed_precision"] == "auto"


def test_a_search_that_finds_no_plan_is_refused_naming_the_best(tiny_opset21, tmp_path,
                                                                 monkeypatch):
    """Oracle: the tier with a threshold no quantized model meets (ratio below 1): every
    plan fails, the error names the best plan tried and its figures, nothing is written."""
    from scredge.tiers import QuantizedThresholds

    model, proto = tiny_opset21
    monkeypatch.setattr(pipeline, "export_graph", export_graph_stand_in(proto))
    monkeypatch.setattr("scredge.quantized_tier.quantized_thresholds",
                        lambda bits: QuantizedThresholds(0.99, 0.9))
    monkeypatch.setattr("scredge.export.mixed.PROMOTE_STEPS", (0.25,))
    monkeypatch.setattr(quantized_artifact, "PROMOTE_STEPS", (0.25,))
    record = quantized_artifact.record_heldout
    monkeypatch.setattr(quantized_artifact, "record_heldout",
                        lambda m, sha, tokenizer: record(m, sha, 512, tokenizer))
    with pytest.raises(ScredgeError, match="misses the int4 tier") as err:
        pipeline.export_artifact(model, tmp_path / "a",
                                 quantize=QuantSpec(4, method="rtn", mixed=True))
    assert "2 plan(s) tried; the best:" in str(err.value)
    assert "perplexity ratio" in str(err.value)
    assert "of projection weights in int4" in str(err.value)
    assert list(tmp_path.iterdir()) == []


class _Verdict:
    """A tier report's fields the search reads."""

    def __init__(self, ratio: float):
        self.ratio, self.top1, self.nonfinite, self.bits = ratio, 0.95, 0, 4
        self.failures = [] if ratio <= 1.05 else [f"perplexity ratio {ratio:.4f} > 1.05"]

    @property
    def passed(self) -> bool:
        return not self.failures


def test_skipped_plans_are_bisected_once_a_plan_passes():
    """Oracle: the search's rules on known measured ratios. The uniform plan fails (ratio
    1.7, estimate 1.0); every later plan is predicted to miss, so the most promoted is tried
    (passes), then the skipped ones are bisected: the middle fails, the next passes and is
    kept; graphs built: 4, none rebuilt (the kept plan's graph is the last written)."""
    sizes = {"a": 1, "b": 1, "c": 1, "d": 1, "e": 1}
    order = "abcde"
    plans = []
    for k, estimate in enumerate((1.0, 0.8, 0.6, 0.4, 0.1)):
        plans.append(Plan({n: "int8" if i < k else "int4" for i, n in enumerate(order)},
                          sizes, estimate))
    ratio = {0: 1.7, 1: 1.3, 2: 1.08, 3: 1.04, 4: 1.01}
    search = quantized_artifact.PlanSearch.__new__(quantized_artifact.PlanSearch)
    search.spec, search.log = QuantSpec(4, mixed=True), lambda s: None
    search._fusions, search._embedding = None, "float"
    checked, built = [], []
    search.plans = lambda backend: iter(plans)
    search.build = lambda backend, plan, name: built.append(plans.index(plan))

    def check(backend, plan, name):
        checked.append(plans.index(plan))
        return _Verdict(ratio[plans.index(plan)])

    search.check = check
    chosen = search.choose("ort")
    assert checked == [0, 4, 2, 3] and built == []
    assert chosen.plan is plans[3] and [plans.index(p) for p, _ in chosen.tried] == [0, 2]
