"""`export_artifact`: a verified artifact folder (SCR_SPEC section 4), written atomically.

Everything is written to a temporary folder beside the destination, verified, hashed into
the manifest, and only then renamed into place: an interrupted or failed export leaves no
folder behind (and, with `force`, leaves the old one untouched).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import scredge
from scredge import contract
from scredge.artifact import (
    write_manifest,
)
from scredge.contract import (
    BACKENDS,
    CONFIG_FILE,
    GRAPH_VERSION,
    GRAPH_VERSION_KEY,
    GRAPHS_KEY,
    ONNX_DATA_FILE,
    ONNX_FILE,
    REFERENCE_KEY,
    TOKENIZER_KEY,
    WEIGHTS_FILE,
    GraphIO,
)
from scredge.deps import require
from scredge.destination import (
    destination_lock,
    recover_hidden,
    refuse_disk_full,
    replace_folder,
)
from scredge.errors import ScredgeError
from scredge.export.graph import DEFAULT_OPSET, MIN_OPSET, export_graph
from scredge.export.ort_shared_cache import (
    check_cache_option,
    default_cache,
    write_float_shared,
)
from scredge.export.partial_folder import (  # noqa: F401 (re-exported: tests, callers)
    PARTIAL_INFIX,
    _lock,
    _share_permissions,
    check_destination,
    check_replaceable,
    clean_stale_partials,
    verify_manifest_listing,
)
from scredge.export.quantize import QUANT_OPSET, QuantSpec
from scredge.export.quantized_artifact import quantize_artifact
from scredge.export.reference_pass import GREEDY_TOKENS, finish_reference, record_reference
from scredge.export.stamp_apart import start_trace
from scredge.export.verify import verify_onnx
from scredge.tokenizer_files import TokenizerFiles

DTYPES = ("float32", "float16")
TARGETS = ("all", *BACKENDS)  # --target: the backends whose graphs the folder holds
EXTERNAL_DATA_BYTES = 1 << 30


def check_options(out: Path, dtype: str, opset: int, force: bool, window: int | None) -> None:
    """Refuse bad options before any work is done or anything is written."""
    if dtype not in DTYPES:
        raise ScredgeError("unknown export dtype", received=repr(dtype),
                           expected=f"one of {list(DTYPES)}")
    onnx = require("onnx")
    max_opset = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= max_opset:
        raise ScredgeError("unsupported ONNX opset", received=opset,
                           expected=f"{MIN_OPSET}..{max_opset} (default {DEFAULT_OPSET}, "
                                    "which TensorRT 10.3 on JetPack 6 and onnxruntime take)")
    if window is not None and window < 3:
        raise ScredgeError(
            "window too small to export", received=f"window = {window}",
            expected="window >= 3 or null",
            fix="the exported graph needs a past-length axis that can hold 0..W-1 with W-1 >= 2; "
                "windows of 1 or 2 run only in the reference model")
    parent = out.parent
    if parent.is_dir():
        with destination_lock(out):
            recover_hidden(out)
    check_destination(out, force)
    if not parent.is_dir():
        raise ScredgeError("the output's parent folder does not exist", received=str(parent),
                           fix=f"create it first: mkdir -p {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ScredgeError("the output's parent folder is not writable", received=str(parent),
                           fix="choose a writable --out or fix the folder's permissions")


def cast_for_export(model, dtype: str):
    """A copy of the float32 reference in the deployment dtype. float16: weights and
    activations in half; Realign's relevance and gate parameters stay float32 (the op
    accumulates in float32); RMSNorm statistics and logits are float32 by construction."""
    model = copy.deepcopy(model)
    if dtype == "float16":
        model.half()
        for block in model.model.layers:
            if hasattr(block, "scr"):
                block.scr.relevance.float()
                block.scr.gate.float()
    return model.eval()


def _versions() -> dict[str, str]:
    out = {"scredge": scredge.__version__, "python": platform.python_version()}
    for dist in ("torch", "onnx", "onnxscript", "onnxruntime"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def default_opset(quantize: QuantSpec | None) -> int:
    """Quantized artifacts need opset 21 (blocked DequantizeLinear, INT4)."""
    return DEFAULT_OPSET if quantize is None else QUANT_OPSET


def check_target(target: str) -> tuple[str, ...]:
    """--target ort|trt|all -> the backends whose graphs are written."""
    if target not in TARGETS:
        raise ScredgeError("unknown export target", received=repr(target),
                           expected=f"one of {list(TARGETS)}",
                           fix="--target all (default) writes the graph of every backend")
    return BACKENDS if target == "all" else (target,)


def config_json(c, export: dict) -> dict:
    """config.json (SCR_SPEC section 4) before verification: the model, the `export`
    settings, the graph's I/O and the tool versions."""
    io = GraphIO.for_config(c)
    realign = {"domain": contract.DOMAIN, "op_type": contract.OP_TYPE,
               "version": contract.OP_VERSION, "onnx_function": True}
    return {
        GRAPH_VERSION_KEY: GRAPH_VERSION,
        "model": c.to_dict(),
        "export": {**export, "realign": realign},
        "io": {"inputs": list(io.inputs), "outputs": list(io.outputs),
               "kv_dtype": export["dtype"], "scr_dtype": "float32", "logits_dtype": "float32"},
        "versions": _versions(),
    }


def check_quantize(quantize: QuantSpec | None, dtype: str, opset: int, config) -> None:
    if quantize is None:
        return
    quantize.check(dtype, config)
    if opset < QUANT_OPSET:
        raise ScredgeError("quantized artifacts need ONNX opset 21 or later",
                           received=f"--opset {opset}",
                           expected=f">= {QUANT_OPSET} (blocked DequantizeLinear, INT4)",
                           fix="drop --opset (a quantized export defaults to 21)")


def _window_record(proto, window) -> None:
    record = proto.metadata_props.add()  # the runtime checks config.json against it
    record.key, record.value = contract.WINDOW_METADATA, str(window)


def write_graph(model, dtype: str, opset: int, tmp: Path, trace,
                log: Callable[[str], None]) -> tuple[object | None, bool, int, dict]:
    """The graph in `tmp` (ONNX_FILE, and ONNX_DATA_FILE when external): (the in-memory
    proto when it was traced whole, else None; whether the weights are external; nodes;
    manifest entries of the files hashed as written).

    `trace` (`start_trace`'s): stamp the graph out of the shallow trace and write the
    weights one at a time (export/stream_write.py); a model that cannot be stamped is
    traced whole. A quantized export then quantizes the written graph's
    weights one at a time (export/quant_store.py)."""
    import gc

    onnx = require("onnx")
    from scredge.export import stream_write as sw
    from scredge.ref.mapped import release_all

    c = model.config
    gc.collect()  # the reference pass's garbage, while the trace still runs
    stamped = trace()
    if stamped is None:
        proto = export_graph(cast_for_export(model, dtype), opset)
        _window_record(proto, c.window)
        large = proto.ByteSize() > EXTERNAL_DATA_BYTES
        onnx.save_model(proto, str(tmp / ONNX_FILE), save_as_external_data=large,
                        all_tensors_to_one_file=True, location=ONNX_DATA_FILE)
        return proto, large, len(proto.graph.node), {}
    log(f"  stamped {c.n_layers} layers out of a {stamped.traced_layers}-layer trace")
    _window_record(stamped.proto, c.window)
    params = model.state_dict()
    sw.dedup_small(stamped, params)
    data = sw.write_onnx(stamped, params, tmp / ONNX_FILE, ONNX_DATA_FILE, sw.release_of(model))
    release_all(model)
    onnx.checker.check_model(str(tmp / ONNX_FILE))
    nodes = len(stamped.proto.graph.node)
    del stamped  # freed as its last reference goes; cycles were collected before
    sw.trim_heap()
    return None, True, nodes, {ONNX_DATA_FILE: data}


def write_reference(model, path: Path | None, threaded: bool = True) -> dict:
    """The float32 reference checkpoint (scredge.ref.save_checkpoint's file), streamed one
    tensor at a time; its manifest entry (sha256, bytes). `path` None: hashed, not
    written (a slim folder names the weights by their hash only); `threaded`: hashed in a
    worker thread (False: in this one, beside the trace's child)."""
    from scredge.export.stream_write import release_of, write_safetensors
    from scredge.ref.checkpoint import CONFIG_METADATA_KEY

    meta = {"format": "pt", CONFIG_METADATA_KEY: json.dumps(model.config.to_dict())}
    return write_safetensors(model.state_dict(), path, meta, release_of(model), threaded)


def check_all(out: Path, c, dtype: str, opset: int, force: bool, quantize, target: str,
              cache: str | None, memory_check: bool) -> tuple[str, ...]:
    """Every refusal before work starts; the backends whose graphs are written."""
    check_options(out, dtype, opset, force, c.window)
    check_quantize(quantize, dtype, opset, c)
    targets = check_target(target)
    check_cache_option(cache, targets)
    if memory_check:
        from scredge import memory  # the module, so a test may stand in its reading
        from scredge.export.memory_check import check_export_memory

        check_export_memory(c, memory.available_cpu_memory())
    return targets


def write_parts(model, tmp: Path, dtype: str, opset: int, slim_float: bool,
                log: Callable[[str], None]):
    """The reference pass (its golden, export/reference_pass.py) beside the shallow trace,
    then the graph and the reference weights: (golden, proto or None, external, nodes,
    manifest entries of the files hashed as written, the reference weights' sha256). A
    slim float folder names its reference weights by their hash: they are never written."""
    from scredge.export.stream_write import trim_heap

    # what loading freed (--from-llama's seeded SCR draws discard a base-shaped tensor at a
    # time: ~0.2 GB of free heap) leaves this process, and its trace child, before they peak
    trim_heap()
    trace = start_trace(model, dtype, opset)
    try:
        golden = record_reference(model, GREEDY_TOKENS if slim_float else 0, log)
        # while the trace still runs (its child on the other core)
        entry = write_reference(model, None if slim_float else tmp / WEIGHTS_FILE,
                                threaded=not trace.apart)
        proto, large, nodes, known = write_graph(model, dtype, opset, tmp, trace, log)
    except BaseException:
        trace.cancel()  # the trace's child process ends with the export
        raise
    if (tmp / WEIGHTS_FILE).exists():
        known[WEIGHTS_FILE] = entry
    return golden, proto, large, nodes, known, entry["sha256"]


@contextlib.contextmanager
def partial_folder(out: Path, log: Callable[[str], None]):
    """The export's temporary folder beside `out` (stale ones of interrupted exports removed
    first), locked while the export lives; on any error it is removed (a full disk named as
    such, destination.refuse_disk_full) and the error raised again."""
    clean_stale_partials(out, log)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL_INFIX}", dir=out.parent))
        lock = _lock(tmp)
    except OSError as exc:
        raise ScredgeError("cannot create the output folder", received=f"{out}: {exc.strerror}",
                           fix="choose a writable --out") from exc
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        refuse_disk_full(exc, out)
        raise
    finally:
        os.close(lock)


@dataclass
class Written:
    """What an export's first half (the reference pass, the graph and the weights written,
    `write_half`) hands its verification (`finish_half`): picklable, so that
    export/model_apart.py sends it from the process that held the model."""

    golden: object  # scredge.golden_file.Golden: the reference's calls, replayed
    proto: object | None  # the graph when traced whole, else None (streamed to the folder)
    known: dict  # manifest entries of the files hashed as written
    sha256: str  # of the reference weights
    config: dict  # config.json before verification
    t1: float  # perf_counter when the graph was written


def write_half(model, tmp: Path, *, dtype: str, opset: int, source: dict | None,
               tokenizer: TokenizerFiles | None, quantize: QuantSpec | None,
               keep_reference: bool, target: str, log: Callable[[str], None]) -> Written:
    """The reference pass beside the trace, the graph and weights written into `tmp`, the
    tokenizer copied, config.json's sections so far."""
    t0 = time.perf_counter()
    log(f"exporting {dtype} graph (opset {opset}) ...")
    golden, proto, large, nodes, known, sha = write_parts(
        model, tmp, dtype, opset, not keep_reference and quantize is None, log)
    config = config_json(model.config, {
        "dtype": dtype, "opset": opset, "source": source or {}, "external_data": large,
        "target": target, REFERENCE_KEY: {"sha256": sha, "kept": keep_reference}})
    if tokenizer is not None:
        tokenizer.copy_into(tmp)
        config[TOKENIZER_KEY] = tokenizer.describe()
        log(f"  tokenizer: {', '.join(tokenizer.files)} (eos ids "
            f"{list(tokenizer.eos_token_ids)})")
    t1 = time.perf_counter()
    log(f"  graph written in {t1 - t0:.1f} s ({nodes} nodes)")
    return Written(golden, proto, known, sha, config, t1)


def finish_half(w: Written, model, tmp: Path, out: Path, *, dtype: str,
                quantize: QuantSpec | None, tokenizer: TokenizerFiles | None,
                targets: tuple[str, ...], cache: str, keep_reference: bool, force: bool,
                log: Callable[[str], None]) -> None:
    """Verify the written graph(s) against the golden, finish the folder and rename it into
    place. `model` is read for its config only, except by a quantized export."""
    config, known = w.config, w.known
    log("verifying with onnxruntime against the reference ...")
    report = verify_onnx(tmp / ONNX_FILE, model, dtype, w.golden)
    for line in report.lines():
        log("  " + line)
    if not report.passed:
        raise ScredgeError(
            f"export verification failed: the {dtype} graph does not meet the logits tier",
            received=report.failures(),
            expected="SCR_SPEC section 5, logits tier",
            fix="nothing was written; report this with the model and options used")
    config["export"]["verification"] = {n: r.summary() for n, r in report.phases}
    config[GRAPHS_KEY] = {b: ONNX_FILE for b in targets}
    if quantize is not None:
        config[contract.QUANT_CONFIG_KEY] = section = quantize_artifact(
            tmp, w.proto, model, quantize, log, tokenizer, targets, cache)
        config["export"]["external_data"] = (tmp / ONNX_DATA_FILE).is_file()
        known.pop(ONNX_DATA_FILE, None)  # the quantizer replaced it: hash it anew
        config[GRAPHS_KEY] = {b: g["file"] for b, g in section["graphs"].items()}
    elif cache == contract.CACHE_SHARED:
        config.update(write_float_shared(tmp, w.proto, model, dtype, log, targets, w.golden))
    if cache == contract.CACHE_SHARED:
        config[GRAPH_VERSION_KEY] = contract.GRAPH_VERSION_V3
    finish_reference(tmp, w.golden, w.sha256, keep_reference, quantize is not None, log)
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    write_manifest(tmp, known)
    _share_permissions(tmp)
    log(f"  verified in {time.perf_counter() - w.t1:.1f} s")
    replace_folder(tmp, out, lambda o: check_destination(o, force))


def export_artifact(model, out: str | Path, *, dtype: str = "float32",
                    opset: int | None = None, force: bool = False,
                    source: dict | None = None, tokenizer: TokenizerFiles | None = None,
                    quantize: QuantSpec | None = None, cache: str | None = None,
                    log: Callable[[str], None] = lambda s: None,
                    keep_reference: bool = True, target: str = "all",
                    memory_check: bool = True) -> Path:
    """Export the float32 reference `model` to a verified artifact folder at `out`, with the
    Hugging Face `tokenizer` files when given (copied, listed in the manifest); with
    `quantize`, a weight-only int8/int4 artifact (SCR_SPEC section 4) that must meet the
    quantized tier (section 5) in both of its graphs; `cache` "shared" (None: the default
    with an onnxruntime graph): the in-place KV cache (SCR_SPEC v3 section 3), TensorRT
    reads concat from model.trt.onnx; "concat". `keep_reference`: keep the float32
    reference weights (model.safetensors; the CLI's default: a slim folder); `target`:
    'all', 'ort' or 'trt', the backends whose graphs the folder holds; `memory_check`:
    refuse a model the memory available cannot hold (export/memory_check.py).
    export/model_apart.py runs the same two halves in two processes."""
    out = Path(out).absolute()
    opset = default_opset(quantize) if opset is None else opset
    targets = check_all(out, model.config, dtype, opset, force, quantize, target, cache,
                        memory_check)
    cache = cache or default_cache(targets)
    with partial_folder(out, log) as tmp:
        w = write_half(model, tmp, dtype=dtype, opset=opset, source=source,
                       tokenizer=tokenizer, quantize=quantize,
                       keep_reference=keep_reference, target=target, log=log)
        finish_half(w, model, tmp, out, dtype=dtype, quantize=quantize, tokenizer=tokenizer,
                    targets=targets, cache=cache, keep_reference=keep_reference,
                    force=force, log=log)
    return out
