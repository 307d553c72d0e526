"""The export's verification session (export/verify.py): onnxruntime without its CPU arena
(less memory under a float16 graph's float32 weight copies). Oracle: the same session with
the arena gives the same logits to the bit, so the verification's numbers do not change."""

from __future__ import annotations

import numpy as np
import pytest

from scredge.contract import ONNX_FILE, TRT_ONNX_FILE
from scredge.export.verify import verify_onnx
from scredge.runtime import loaders


@pytest.mark.parametrize("graph", [ONNX_FILE, TRT_ONNX_FILE])  # shared and concat forms
def test_verification_session_has_no_arena_and_the_same_numbers(monkeypatch, tiny_artifact,
                                                                 graph):
    model, folder = tiny_artifact
    made = []
    real = loaders.ort_session

    def recording(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(loaders, "ort_session", recording)
    report = verify_onnx(folder / graph, model, "float32")
    assert report.passed
    assert made[-1].get_session_options().enable_cpu_mem_arena is False

    def with_arena(*args, **kwargs):
        return real(*args, **{**kwargs, "arena": True})

    monkeypatch.setattr(loaders, "ort_session", with_arena)
    arena = verify_onnx(folder / graph, model, "float32")
    for (name, got), (_, want) in zip(report.phases, arena.phases, strict=True):
        assert (got.max_abs, got.kl_max, got.top1) == (want.max_abs, want.kl_max, want.top1), name
    assert np.isfinite([r.max_abs for _, r in report.phases]).all()
