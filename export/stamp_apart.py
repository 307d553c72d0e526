"""The shallow trace of export/stamp.py started early, in a child process, while the
exporting process runs the reference (issue 27): the trace needs only the config, and on
two cores the two run side by side. The exporter's machinery (torch.export, the ONNX
translation and optimizer, about 400 MB resident once used) never loads into the process
that writes and verifies the weights; the child's peak is the trace's."""

from __future__ import annotations

import gc
from collections.abc import Callable

from scredge.config import SCRConfig
from scredge.deps import require
from scredge.export.stamp import StampedGraph, stamp_graph

# above this many bytes of float32 weights the shallow trace runs in a child process, whose
# exporter machinery then never stays resident beside the weights (export/stamp.py)
TRACE_APART_BYTES = 256 << 20


def start_trace(model, dtype: str, opset: int):
    """The shallow trace of `model`'s graph, started now (in a child process above
    TRACE_APART_BYTES of weights). Every export streams: float and quantized, concat and
    shared KV-cache forms (export/ort_shared_cache.stream_shared rewrites the streamed
    graph); a model the stamp cannot make is traced whole (pipeline.write_graph)."""
    weights = sum(p.numel() * 4 for p in model.parameters())
    return start_stamp(model.config, dtype, opset, weights > TRACE_APART_BYTES)


def start_stamp(c: SCRConfig, dtype: str, opset: int,
                apart: bool) -> Callable[[], StampedGraph | None]:
    """A function that returns `stamp_graph(c, dtype, opset)`: with `apart`, computed
    from now on in a child process (the function waits for it; its `cancel` ends the child
    of an export that stops before); else computed when called. Its `apart` says which: the
    caller hashes the reference weights in a worker thread only when no child shares the
    cores."""
    if not apart:
        result = lambda: stamp_graph(c, dtype, opset)  # noqa: E731
        result.cancel = lambda: None
        result.apart = False
        return result
    import multiprocessing

    # fork: the child starts with torch and the exporter's modules already imported (a
    # spawned one spends seconds importing them again); it runs torch on one thread only.
    # Python 3.12+ warns (a DeprecationWarning, shown under pytest or -W default) at every
    # fork of a process with more than one OS thread, and this one has idle pool workers by
    # now: numpy's OpenBLAS and torch's intra-op OpenMP (3 threads at this call in `scredge
    # export --from-gguf` SmolLM2). Fork is safe here, so the warning is left as it is, not
    # filtered: OpenBLAS stops its workers in its own pthread_atfork handler; the OpenMP
    # workers wait idle at their pool (the main thread is here, not in a parallel region)
    # and the child never reaches them, as it sets one torch thread before any torch op
    # (at::parallel_for and MKL then run on the calling thread); logging and the import
    # lock are reset by Python after a fork. spawn / forkserver would cost the child about
    # 2 s more CPU of about 10 s (SmolLM2's shape, measured once under load) and would
    # import the caller's __main__ again: a script calling export_artifact without an
    # `if __name__ == "__main__":` guard would fail.
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(send, c.to_dict(), dtype, opset), daemon=True)
    # frozen: the trace's ~540 collections skip the parent's objects and copy none of their
    # pages, ~0.5 of the trace's ~1 CPU-s of collection
    start_frozen(child)
    send.close()

    def result() -> StampedGraph | None:
        try:
            kind, got = receive.recv()
        except EOFError:
            kind, got = "error", "it ended without an answer"
        finally:
            receive.close()
            child.join()
        if kind == "error":
            raise RuntimeError(f"the graph trace failed in its child process: {got} "
                               f"(exit code {child.exitcode})")
        if got is None:
            return None
        proto = require("onnx").ModelProto()
        proto.ParseFromString(got[0])
        return StampedGraph(proto, got[1], got[2])

    def cancel() -> None:
        if child.is_alive():
            child.terminate()
        child.join()
        receive.close()

    result.cancel = cancel
    result.apart = True
    return result


def start_frozen(child) -> None:
    """Start the forked process `child` with every object alive now frozen out of its
    garbage collector (the parent's collector takes them back at once): the child's
    collections skip them, copying none of their pages, and never finalize there an object
    the parent owns."""
    gc.freeze()
    try:
        child.start()
    finally:
        gc.unfreeze()


def _child(send, config: dict, dtype: str, opset: int) -> None:
    # one thread: the exporting process runs the reference on the other core meanwhile
    try:
        require("torch").set_num_threads(1)
        stamped = stamp_graph(SCRConfig.from_dict(config), dtype, opset)
        send.send(("ok", None if stamped is None else
                   (stamped.proto.SerializeToString(), stamped.recipes,
                    stamped.traced_layers)))
    except Exception:  # handed to the parent, which raises it
        import traceback

        send.send(("error", traceback.format_exc(limit=-3)))
    finally:
        send.close()
