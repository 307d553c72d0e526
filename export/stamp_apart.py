"""The shallow trace of export/stamp.py in a child process, while the exporting process
loads the model and runs the reference (issue 27): the trace needs only the config, and on
two cores the two run side by side. The exporter's machinery (torch.export, the ONNX
translation and optimizer, about 400 MB resident once used) never loads into the process
that writes and verifies the weights; the child's peak is the trace's.

The trace is the export's critical path (issue 27, docs/performance-export.md round 3), so
its child can be forked before the model is read (`early_trace`, from the CLI): it imports
the exporter's modules (~1 s of CPU) while this process reads the config and maps the
weights, then waits for its job. An export that does not use it lets it go."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from scredge.config import SCRConfig
from scredge.deps import require
from scredge.export.stamp import StampedGraph, stamp_graph

# above this many bytes of float32 weights the shallow trace runs in a child process, whose
# exporter machinery then never stays resident beside the weights (export/stamp.py)
TRACE_APART_BYTES = 256 << 20
# a source file at least this large (a 4-bit GGUF of TRACE_APART_BYTES of float32) is worth
# an early trace child
EARLY_SOURCE_BYTES = TRACE_APART_BYTES // 8
# what the trace imports, imported by an early child while it waits for its job
_EXPORTER_MODULES = ("torch.export", "torch._dynamo", "torch.onnx._internal.exporter._core",
                     "onnxscript", "scredge.export.graph", "scredge.ref.model")

_waiting: _TraceChild | None = None  # an early child no export has taken yet


def start_trace(model, dtype: str, opset: int, stream: bool):
    """`stream`: the shallow trace of `model`'s graph, started now (in a child process
    above TRACE_APART_BYTES of weights, or in the early child when there is one); else
    None: the graph is traced whole (a quantized export, whose quantizer takes the whole
    graph)."""
    if not stream:
        return None
    weights = sum(p.numel() * 4 for p in model.parameters())
    return start_stamp(model.config, dtype, opset, weights > TRACE_APART_BYTES)


def start_stamp(c: SCRConfig, dtype: str, opset: int,
                apart: bool) -> Callable[[], StampedGraph | None]:
    """A function that returns `stamp_graph(c, dtype, opset)`: with `apart` (or an early
    child waiting), computed from now on in a child process (the function waits for it;
    its `cancel` ends the child of an export that stops before); else computed when
    called."""
    global _waiting
    child, _waiting = _waiting, None
    job = (c.to_dict(), dtype, opset)
    if child is not None and child.job not in (None, job):
        child.cancel()  # started early on another config: not this export's graph
        child = None
    if child is None and not apart:
        result = lambda: stamp_graph(c, dtype, opset)  # noqa: E731
        result.cancel = lambda: None
        return result
    if child is None:
        child = _TraceChild(preimport=False)
    if child.job is None:
        child.submit(job)
    result = lambda: child.result()  # noqa: E731
    result.cancel = child.cancel
    return result


def submit_early(c: SCRConfig, dtype: str, opset: int) -> None:
    """Hand the early child (when there is one) its job as soon as the config is known,
    before the model's weights are read; `start_stamp` takes it if its job is the same."""
    if _waiting is not None and _waiting.job is None:
        _waiting.submit((c.to_dict(), dtype, opset))


@contextlib.contextmanager
def early_trace(source_bytes: int) -> Iterator[None]:
    """Within it, the next `start_stamp` takes a trace child forked now (when the source,
    `source_bytes` of files, is at least EARLY_SOURCE_BYTES); one no export took is let go
    on leaving (it was importing, waiting, or tracing a job `submit_early` gave it)."""
    global _waiting
    if source_bytes >= EARLY_SOURCE_BYTES and _waiting is None:
        _waiting = _TraceChild(preimport=True)
    try:
        yield
    finally:
        child, _waiting = _waiting, None
        if child is not None:
            child.cancel()


class _TraceChild:
    """A forked process that stamps one graph: `submit` its job, `result` waits for it.
    fork: the child starts with torch and the modules imported so far (a spawned one
    spends seconds importing them again); it runs torch on one thread only."""

    def __init__(self, preimport: bool) -> None:
        import multiprocessing

        require("torch")  # imported before the fork: the child has it for free
        ctx = multiprocessing.get_context("fork")
        jobs, self._jobs = ctx.Pipe(duplex=False)
        self._answers, answer = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_child, args=(jobs, self._jobs, answer, preimport),
                                 daemon=True)
        self._proc.start()
        jobs.close()
        answer.close()
        self.job: tuple | None = None  # (config dict, dtype, opset) once submitted

    def submit(self, job: tuple) -> None:
        self.job = job
        self._jobs.send(job)
        self._jobs.close()

    def result(self) -> StampedGraph | None:
        try:
            kind, got = self._answers.recv()
        except EOFError:
            kind, got = "error", "it ended without an answer"
        finally:
            self._answers.close()
            self._proc.join()
        if kind == "error":
            raise RuntimeError(f"the graph trace failed in its child process: {got} "
                               f"(exit code {self._proc.exitcode})")
        if got is None:
            return None
        proto = require("onnx").ModelProto()
        proto.ParseFromString(got[0])
        return StampedGraph(proto, got[1])

    def cancel(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join()
        self._jobs.close()
        self._answers.close()


def _child(jobs, parent_end, send, preimport: bool) -> None:
    # one thread: the exporting process runs the reference on the other core meanwhile
    parent_end.close()  # else the parent's end never reads as closed here
    try:
        require("torch").set_num_threads(1)
        if preimport:
            _import_exporter()
        try:
            config, dtype, opset = jobs.recv()
        except EOFError:  # let go: no export took this child
            return
        stamped = stamp_graph(SCRConfig.from_dict(config), dtype, opset)
        send.send(("ok", None if stamped is None else
                   (stamped.proto.SerializeToString(), stamped.recipes)))
    except Exception:  # handed to the parent, which raises it
        import traceback

        send.send(("error", traceback.format_exc(limit=-3)))
    finally:
        send.close()


def _import_exporter() -> None:
    import importlib

    for name in _EXPORTER_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # the trace itself says what is missing
