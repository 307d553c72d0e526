"""`scredge export` of a float artifact in two processes (issue 27, float16 memory): the model
is loaded, run (the golden reference), traced and written by a forked child, and this
process, which never imports torch, verifies the written graphs against the golden and
finishes the folder once the child has ended.

Why: onnxruntime runs a float16 graph on the CPU with float32 copies of its weights (538 MB
on SmolLM2-135M), made when the verification's session is created; beside torch and the
exporter's modules (~0.4 GB resident in the process that loaded the model, never handed
back) that session was the export's peak, above onnxruntime-genai's builder's whole run. In
a process without torch the same session sits on ~0.1 GB. Same halves, same code as
`pipeline.export_artifact` (`write_half`, `finish_half`): the same files, the same checks.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from scredge.config import SCRConfig
from scredge.errors import ScredgeError
from scredge.export import pipeline as P
from scredge.export.stamp_apart import start_frozen


class ReferenceConfig:
    """What the verification reads of the reference model once its golden stands in for
    it: the config (export/verify.py replays the golden's calls, never the model)."""

    def __init__(self, config: SCRConfig) -> None:
        self.config = config


def export_apart(load: Callable[[], object], out: str | Path, *, dtype: str = "float32",
                 opset: int | None = None, force: bool = False, cache: str | None = None,
                 keep_reference: bool = True, target: str = "all", memory_check: bool = True,
                 log: Callable[[str], None] = lambda s: None) -> Path:
    """`pipeline.export_artifact` (float, no quantization) of the model `load()` returns (an
    `export.sources.ModelSource`: model, description, tokenizer), loaded in a forked child
    that writes the graph and weights into the export's folder; verified and finished here.
    A graph traced whole (not streamed) is finished in the child as before."""
    out = Path(out).absolute()
    opset = P.default_opset(None) if opset is None else opset
    with P.partial_folder(out, log) as tmp:
        got = _run_child(load, tmp, out, dtype=dtype, opset=opset, force=force, cache=cache,
                         keep_reference=keep_reference, target=target,
                         memory_check=memory_check, log=log)
        if got is not None:  # the child wrote the graph: verified and finished here
            w, config, targets, cache_form = got
            P.finish_half(w, ReferenceConfig(SCRConfig.from_dict(config)), tmp, out,
                          dtype=dtype, quantize=None, tokenizer=None, targets=targets,
                          cache=cache_form, keep_reference=keep_reference, force=force,
                          log=log)
    return out


def _run_child(load, tmp: Path, out: Path, **kw):
    """The first half in a forked child: (Written, the config as a dict, targets, cache
    form), or None when the child finished the export itself. The child's error is raised
    here as it was raised there."""
    import multiprocessing

    # fork: the child inherits this process's modules and the open lock on `tmp`; it is not
    # a daemon, so that it may fork the trace's child in turn (export/stamp_apart.py)
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(send, load, tmp, out, kw))
    # frozen out of the child's collector: the export collects garbage
    # (pipeline.write_graph), and an onnxruntime session a caller left in a reference cycle
    # (a test suite, a script) would be destroyed there, waiting forever on its threads
    start_frozen(child)
    send.close()
    try:
        try:
            kind, got = receive.recv()
            while kind == "log":  # the child's log lines, through the caller's own `log`
                kw["log"](got)
                kind, got = receive.recv()
        except EOFError:
            child.join()
            raise ScredgeError(
                "the export's model process ended without a result",
                received=f"exit code {child.exitcode}",
                fix="a negative code is the signal that ended it (-9: most likely the "
                    "kernel's out-of-memory killer); see its output above") from None
    finally:
        receive.close()
        if child.is_alive() and sys.exc_info()[0] is not None:
            child.terminate()  # this process was interrupted: the child goes with it
        child.join()
    if kind == "error":
        raise got
    return got


def _child(send, load, tmp: Path, out: Path, kw: dict) -> None:
    def log(line: str) -> None:
        send.send(("log", line))

    try:
        if "torch" in sys.modules:  # forked from a process that ran torch (a test, a
            sys.modules["torch"].set_num_threads(1)  # script): its OpenMP pool is not ours
        src = load()
        model = src.model
        targets = P.check_all(out, model.config, kw["dtype"], kw["opset"], kw["force"], None,
                              kw["target"], kw["cache"], kw["memory_check"])
        cache = kw["cache"] or P.default_cache(targets)
        w = P.write_half(model, tmp, dtype=kw["dtype"], opset=kw["opset"],
                         source=src.description, tokenizer=src.tokenizer, quantize=None,
                         keep_reference=kw["keep_reference"], target=kw["target"], log=log)
        if w.proto is not None:  # traced whole: the graph is in this process's memory
            P.finish_half(w, model, tmp, out, dtype=kw["dtype"], quantize=None,
                          tokenizer=src.tokenizer, targets=targets, cache=cache,
                          keep_reference=kw["keep_reference"], force=kw["force"], log=log)
            send.send(("ok", None))
        else:
            send.send(("ok", (w, model.config.to_dict(), targets, cache)))
    except BaseException as exc:  # raised again in the parent
        try:
            send.send(("error", exc))
        except Exception:  # an exception that does not pickle
            send.send(("error", RuntimeError(f"the export's model process failed: {exc!r}")))
    finally:
        send.close()
