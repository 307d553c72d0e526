"""Export-time verification: the new graph in onnxruntime (CPU) against the float32 reference,
over a prefill call and teacher-forced decode calls that thread the state (SCR_SPEC section 5,
logits tier). The exporter refuses an artifact that fails."""

from __future__ import annotations

import gc
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


def recorded_reference(model, vocab_size: int, dtype: str, **kwargs):
    """Run the reference through the whole teacher-forced sequence first and replay its
    logits later: its weights (a memory-mapped model's pages) are handed back before
    onnxruntime loads the graph, so the two never hold the weights at once."""
    from scredge.ref.mapped import release_all

    calls: list[np.ndarray] = []
    step = reference_stepper(model)

    def record(ids, pos):
        calls.append(step(ids, pos))
        return calls[-1]

    torch = require("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few small calls: worker threads would mostly wait
    try:
        teacher_forced(record, lambda ids, pos: calls[-1], vocab_size, dtype, **kwargs)
    finally:
        torch.set_num_threads(threads)
    release_all(model)
    replay = iter(calls)
    return lambda ids, pos: next(replay)


def verify_onnx(onnx_path: Path, model, dtype: str, golden=None,
                **kwargs) -> TeacherForcedReport:
    """Compare `onnx_path` run by onnxruntime (CPU) with `model`, the float32 reference;
    with `golden` (export/reference_pass.py), the reference's calls recorded there are
    replayed (all of its decode steps) instead of run again."""
    from scredge.export.stream_write import trim_heap
    from scredge.runtime.loaders import ort_session

    vocab = model.config.vocab_size
    if golden is not None:
        from scredge.export.reference_pass import replayed_reference

        reference = replayed_reference(golden)
        kwargs = {"batch": golden.steps_ids[0].shape[0],
                  "prompt_len": golden.steps_ids[0].shape[1],
                  "decode_steps": len(golden.steps_ids) - 1, **kwargs}
    else:
        reference = recorded_reference(model, vocab, dtype, **kwargs)
    # unpacked weights: onnxruntime reads them where it mapped the file, no packed copy;
    # threads that sleep rather than spin between the few calls made here; no arena (a
    # few calls of small activations); the C heap's free pages handed back first, so what
    # a previous step freed is not resident under the session (a float16 graph's weights
    # are float32 copies in onnxruntime's memory: its peak)
    trim_heap()
    session = ort_session(onnx_path, "cpu", config_entries={
        "session.disable_prepacking": "1", "session.intra_op.allow_spinning": "0"},
        arena=False)
    kv = np.float16 if dtype == "float16" else np.float32
    runner = OrtRunner(session, model.config, kv)
    try:
        return teacher_forced(reference, runner.decoder(kwargs.get("batch", 2)).step,
                              vocab, dtype, **kwargs)
    finally:
        # the session (a float16 graph's float32 weights: 2 GB at Qwen2.5-0.5B) is held in a
        # reference cycle through its decoder: collected and its pages handed back now,
        # before the export's next session opens beside what it left (0.25 GB)
        del runner, session
        gc.collect()
        trim_heap()
