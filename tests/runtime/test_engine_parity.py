"""The runtime against the reference. Oracle: `scr_ref`'s own generation loop (greedy and
seeded sampling through the same NumPy sampler) on the weights the artifact came from."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from scredge.ref import generate as ref_generate
from scredge.runtime import Engine
from scredge.sampling import SamplingParams


@pytest.mark.parametrize("prompt_len", [20, 150])  # shorter and longer than W = 128
def test_greedy_ids_equal_the_reference_for_128_tokens(tiny_artifact, prompt_len):
    model, folder = tiny_artifact
    prompt = np.random.default_rng(prompt_len).integers(0, 256, prompt_len).tolist()
    result = Engine.load(folder, backend="ort").generate(prompt, 128, temperature=0)
    assert result.ids == ref_generate(model, prompt, 128)[0]
    assert len(set(result.ids)) > 10, "degenerate output would make this test vacuous"


def test_seeded_sampling_and_batches_match_the_reference(small_window_artifact):
    model, folder = small_window_artifact
    engine = Engine.load(folder)
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12]]
    params = dict(temperature=0.9, top_k=40, top_p=0.95, repetition_penalty=1.2)
    got = engine.generate(prompts, 60, seed=11, **params)
    want = ref_generate(model, prompts, 60, SamplingParams(**params), seed=11)
    assert [r.ids for r in got] == want


@pytest.mark.parametrize("form", ["shared", "concat"])
def test_long_generation_stays_within_the_window(small_window_artifact, form, request):
    """Oracle: the reference loop over 300 tokens, far past W = 16; the memory stays
    constant: the concat cache never exceeds W-1 positions, the shared buffer keeps its
    capacity (2W) and no row holds more."""
    model, folder = small_window_artifact
    if form == "concat":
        folder = request.getfixturevalue("small_window_concat")[1]
    engine = Engine.load(folder)
    gen = engine.generator([1, 2, 3], temperature=0, max_new_tokens=300)
    ids = []
    while not gen.is_done():
        ids.append(int(gen.next_token()[0]))
        if form == "concat":
            assert gen.decoder.past <= 15
        else:
            assert gen.decoder.capacity == 32 and gen.decoder.lengths.max() <= 32
    assert ids == ref_generate(model, [1, 2, 3], 300)[0]


def test_generator_append_equals_one_prompt(small_window_artifact):
    """Oracle: the same tokens given as one prompt. Appending a second turn after sampling
    must thread the state exactly."""
    _, folder = small_window_artifact
    engine = Engine.load(folder)
    gen = engine.generator([40, 41, 42], temperature=0)
    first = int(gen.next_token()[0])
    gen.append([50, 51])
    after = [int(gen.next_token()[0]) for _ in range(5)]
    whole = engine.generate([40, 41, 42, first, 50, 51], 5, temperature=0)
    assert after == whole.ids


def test_concurrent_calls_equal_sequential(small_window_artifact):
    _, folder = small_window_artifact
    engine = Engine.load(folder)
    jobs = [([i, i + 1, i + 2], i) for i in range(6)]
    sequential = [engine.generate(p, 40, temperature=0.8, seed=s).ids for p, s in jobs]
    results: dict[int, list[int]] = {}

    def work(k):
        p, s = jobs[k]
        results[k] = engine.generate(p, 40, temperature=0.8, seed=s).ids

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[k] for k in range(len(jobs))] == sequential


def test_optimised_graph_is_used_and_agrees(small_window_artifact, tmp_path):
    """`scredge build --backend ort` output: listed in the manifest, loaded, same tokens."""
    import shutil

    from scredge.builder.ort_build import build_ort
    from scredge.runtime.loaders import open_artifact

    _, folder = small_window_artifact
    copy = tmp_path / "built"
    shutil.copytree(folder, copy)
    path, report = build_ort(open_artifact(copy))
    assert report.passed and len(report.phases) == 9
    artifact = open_artifact(copy)  # the manifest, rewritten, still verifies
    assert artifact.engines["ort-cpu"]["file"] == path.name
    a = Engine.load(folder).generate([3, 4, 5], 50, temperature=0).ids
    b = Engine.load(copy).generate([3, 4, 5], 50, temperature=0).ids
    assert a == b


def test_appending_after_the_steady_phase(small_window_artifact):
    """Oracle: the reference model fed the same tokens. A multi-token append after the
    decoder reached its fixed-shape phase (P = W-1) must leave it and thread the state."""
    import torch

    model, folder = small_window_artifact
    engine = Engine.load(folder)
    gen = engine.generator([1, 2, 3], temperature=0)
    fed = [1, 2, 3]
    for _ in range(30):  # 33 positions > W-1 = 15: steady
        fed.append(int(gen.next_token()[0]))
    gen.append([7, 8, 9])  # the last sampled token is fed first, then these
    fed += [7, 8, 9]
    with torch.no_grad():
        logits, _ = model(torch.tensor([fed]), torch.arange(len(fed)).view(1, -1))
    np.testing.assert_allclose(gen.logits[0], logits[0, -1].numpy(), atol=1e-4, rtol=0)


def test_float16_artifact_through_the_runtime(small_window_artifact, tmp_path):
    """Oracle: the float32 reference at the float16 logits tier (SCR_SPEC section 5), over a
    prefill and 40 teacher-forced decode steps, far past W = 16 so the fixed-shape phase with
    its float16 state buffers is exercised."""
    from scredge.export.pipeline import export_artifact
    from scredge.export.verify import reference_stepper
    from scredge.teacher_forced import teacher_forced

    model, _ = small_window_artifact
    folder = export_artifact(model, tmp_path / "f16", dtype="float16")
    engine = Engine.load(folder)
    assert engine.runner.kv_dtype == np.float16
    report = teacher_forced(reference_stepper(model), engine.runner.decoder(2).step,
                            256, "float16", decode_steps=40)
    assert report.passed, report.lines()
    assert len(engine.generate([1, 2, 3], 40, temperature=0).ids) == 40
