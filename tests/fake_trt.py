"""A stand-in TensorRT engine and execution context that record every call (no GPU, no
TensorRT), over `fake_cuda.FakeCuda` memory. `execute_async_v3` writes logits = the number
of the engine's run (over all its contexts), so a copy back (or a graph replay) can be
checked; under stream capture it records the run, with the shapes and addresses bound at
that moment, for `launch_graph`."""

from __future__ import annotations

import numpy as np


class FakeContext:
    def __init__(self, engine) -> None:
        self.engine, self.calls = engine, engine.calls
        self.shapes, self.addresses, self.runs = {}, {}, 0
        if engine.capturable is not None:  # TensorRT for RTX's query, where it has one
            self.is_stream_capturable = lambda stream: engine.capturable

    def set_optimization_profile_async(self, profile, stream):
        self.calls.append(("profile", profile))
        return True

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream):
        cuda = self.engine.cuda
        if cuda.is_capturing(stream):
            if self.engine.refuse_capture:
                return False
            shapes, addresses = dict(self.shapes), dict(self.addresses)
            cuda.record(stream, lambda: self._run(shapes, addresses))
            self.calls.append(("captured", shapes, addresses, self))
            return True
        return self._run(self.shapes, self.addresses)

    def _run(self, shapes, addresses):
        if self.engine.fail_at is not None and self.engine.total_runs + 1 >= self.engine.fail_at:
            return False
        self.engine.total_runs += 1
        self.runs += 1
        B, T = shapes["input_ids"]
        logits = np.full((B, T, self.engine.vocab_size), self.engine.total_runs, np.float32)
        self.engine.cuda.mem[addresses["logits"]][:logits.nbytes] = logits.tobytes()
        self.calls.append(("execute", dict(shapes), dict(addresses)))
        return True


class FakeEngine:
    def __init__(self, cuda, vocab_size: int = 256, refuse_capture: bool = False,
                 capturable: bool | None = None, fail_at: int | None = None) -> None:
        self.cuda, self.calls, self.contexts = cuda, cuda.calls, []
        self.vocab_size, self.refuse_capture, self.capturable = vocab_size, refuse_capture, \
            capturable
        self.fail_at, self.total_runs = fail_at, 0  # execute_async_v3 fails from run fail_at

    def create_execution_context(self, runtime_config=None):
        self.contexts.append(FakeContext(self))
        self.contexts[-1].runtime_config = runtime_config
        return self.contexts[-1]
