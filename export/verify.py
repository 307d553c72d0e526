"""Export-time verification: the new graph in onnxruntime (CPU) against the float32 reference,
over a prefill call and teacher-forced decode calls that thread the state (SCR_SPEC section 5,
logits tier). The exporter refuses an artifact that fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scredge.deps import require
from scredge.runtime.runners.ort_runner import OrtRunner
from scredge.teacher_forced import TeacherForcedReport, teacher_forced


def reference_stepper(model):
    """`scr_ref` as a stateful stepper: ids, positions [B,T] -> logits [B,T,V] (NumPy)."""
    torch = require("torch")
    state = None

    def step(ids: np.ndarray, pos: np.ndarray) -> np.ndarray:
        nonlocal state
        with torch.no_grad():
            logits, state = model(torch.from_numpy(ids), torch.from_numpy(pos), state)
        return logits.numpy()

    return step


def verify_onnx(onnx_path: Path, model, dtype: str, **kwargs) -> TeacherForcedReport:
    """Compare `onnx_path` run by onnxruntime (CPU) with `model`, the float32 reference."""
    from scredge.runtime.loaders import ort_session

    session = ort_session(onnx_path, "cpu")
    kv = np.float16 if dtype == "float16" else np.float32
    runner = OrtRunner(session, model.config, kv)
    return teacher_forced(reference_stepper(model), runner.decoder(kwargs.get("batch", 2)).step,
                          model.config.vocab_size, dtype, **kwargs)
