"""The shared ("in-place") KV-cache form of the onnxruntime graph (SCR_SPEC v3, section 3).

One more rewrite pass, after `ort_fusions.fuse_for_onnxruntime`: each standard `Attention`
node (concat form: `present` = past + new, trimmed to the window by a `Slice`) becomes
onnxruntime's `com.microsoft.GroupQueryAttention`, whose past and present caches are one
buffer [B, Hk, C, Dh] of fixed capacity C when the caller binds both to the same memory
(as onnxruntime-genai runs its models). The op appends each row's new keys at that row's
own length, read from `seqlens_k` (tokens cached after the call, minus 1) and
`query_seqlens` (new tokens of the row); `total_sequence_length` is the longest row's count.
So the graph's `attention_mask` goes: rows hold their tokens from slot 0, never a pad.

Rotary stays where the fused graph has it (`RotaryEmbedding` on q and k before the op,
indexed by each row's absolute `position_ids`, every rope-scaling rule included): the op's
own rotary would take positions from cache slots, which a compacted row no longer matches.
The sliding window is the op's `local_window_size`; keys are stored after the rotary, so
the runtime may move a full row's last W-1 keys to the front (runtime/shared_cache.py).
"""

from __future__ import annotations

from scredge.config import SCRConfig
from scredge.contract import (
    ATTENTION_MASK,
    CACHE_CONCAT,
    CACHE_FORMS,
    CACHE_KEY,
    CACHE_SHARED,
    CAPACITY,
    GRAPHS_KEY,
    INPUT_IDS,
    ONNX_DATA_FILE,
    ONNX_FILE,
    ORT_DOMAIN,
    QUERY_SEQLENS,
    SEQLENS_K,
    SHARED_MIN_ONNXRUNTIME,
    TOTAL_SEQUENCE_LENGTH,
    TRT_ONNX_FILE,
    is_kv,
)
from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.export.graph_match import Graph, attr, rewrite

# the onnxruntime whose GroupQueryAttention takes `query_seqlens` (rows of unequal length
# with several new tokens each) and that this form was verified with
MIN_ONNXRUNTIME_SHARED = SHARED_MIN_ONNXRUNTIME
_QUERY_SEQLENS_INPUT = 16  # GroupQueryAttention's input index of query_seqlens


def local_window(window: int | None) -> int:
    """GroupQueryAttention's `local_window_size` for SCR's window W (key q visible to query
    p iff p - W < q <= p): onnxruntime >= 1.32 counts the query's own key in it (W keys
    in all; checked against the reference by tests/export/test_ort_shared_cache.py);
    -1 = full causal."""
    return -1 if window is None else window


def _present_of(g: Graph, name: str, outputs: set[str]):
    """The graph output `present.*` that the Attention cache output `name` becomes: `name`
    itself, or a `Slice` of it (the window trim of the concat form) -> (output, dead)."""
    if name in outputs:
        return name, []
    users = g.consumers[name]
    if len(users) == 1 and users[0] is not None and users[0].op_type == "Slice" and (
            users[0].output[0] in outputs):
        return users[0].output[0], [users[0]]
    return None


def _gqa_nodes(g: Graph, config: SCRConfig):
    """Each Attention node -> (its GroupQueryAttention node, the Slice nodes it replaces)."""
    helper = require("onnx").helper
    outputs = {o.name for o in g.graph.output}
    found = []
    for node in g.nodes:
        if node.op_type != "Attention" or node.domain not in ("", "ai.onnx"):
            continue
        q, k, v, _mask, past_k, past_v = node.input
        pk, pv = _present_of(g, node.output[1], outputs), _present_of(g, node.output[2], outputs)
        if pk is None or pv is None:
            return None
        inputs = [q, k, v, past_k, past_v, SEQLENS_K, TOTAL_SEQUENCE_LENGTH]
        inputs += [""] * (_QUERY_SEQLENS_INPUT - len(inputs)) + [QUERY_SEQLENS]
        gqa = helper.make_node(
            "GroupQueryAttention", inputs, [node.output[0], pk[0], pv[0]],
            name=node.name + "/GroupQueryAttention", domain=ORT_DOMAIN,
            num_heads=config.n_heads, kv_num_heads=config.n_kv_heads,
            scale=attr(node, "scale", config.head_dim ** -0.5),
            local_window_size=local_window(config.window), do_rotary=0)
        found.append((node, gqa, pk[1] + pv[1]))
    return found


def _retype_io(proto, config: SCRConfig) -> None:
    """Graph inputs: the three length inputs in (attention_mask goes after the rewrite);
    every KV cache (input and output) [batch, Hk, cache_capacity, Dh]."""
    onnx = require("onnx")
    helper, TP = onnx.helper, onnx.TensorProto
    graph = proto.graph
    kept = list(graph.input)
    batch = "batch"
    for i in kept:
        if i.name == INPUT_IDS:
            batch = i.type.tensor_type.shape.dim[0].dim_param or batch
    kept += [helper.make_tensor_value_info(SEQLENS_K, TP.INT32, [batch]),
             helper.make_tensor_value_info(TOTAL_SEQUENCE_LENGTH, TP.INT32, []),
             helper.make_tensor_value_info(QUERY_SEQLENS, TP.INT32, [batch])]
    del graph.input[:]
    graph.input.extend(kept)
    for value in [*graph.input, *graph.output]:
        if is_kv(value.name):
            dims = value.type.tensor_type.shape.dim
            dims[0].dim_param = batch
            dims[2].Clear()
            dims[2].dim_param = CAPACITY
    keep_info = [v for v in graph.value_info if not is_kv(v.name)]
    del graph.value_info[:]
    graph.value_info.extend(keep_info)


def to_shared_cache(proto, config: SCRConfig) -> int:
    """Rewrite `proto` (an onnxruntime form that `fuse_for_onnxruntime` gave one `Attention`
    node per layer) into the shared-cache form in place; returns the layers rewritten.
    Refuses (ScredgeError) a graph whose attention did not fuse: the shared form needs
    every layer's cache in the op."""
    g = Graph(proto.graph)
    found = _gqa_nodes(g, config)
    if not found or len(found) != config.n_layers:
        raise ScredgeError(
            "the shared KV-cache form needs every attention block fused",
            received=f"{len(found or [])} of {config.n_layers} layers matched",
            expected="one Attention node per layer after fuse_for_onnxruntime",
            fix="export with --cache concat; report this with the model and options used")
    replace = {id(node): [gqa] for node, gqa, _ in found}
    dead = {id(n) for _, _, slices in found for n in slices}
    _retype_io(proto, config)  # first: the new nodes read the length inputs
    rewrite(proto, g, replace, dead)  # drops the mask's nodes, nothing reads them now
    if any(ATTENTION_MASK in n.input for n in proto.graph.node):
        raise ScredgeError("the shared KV-cache form left a reader of attention_mask",
                           received=[n.name for n in proto.graph.node
                                     if ATTENTION_MASK in n.input][:3],
                           fix="export with --cache concat; report this")
    inputs = [i for i in proto.graph.input if i.name != ATTENTION_MASK]
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)
    if not any(o.domain == ORT_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(require("onnx").helper.make_opsetid(ORT_DOMAIN, 1))
    return len(found)


def default_cache(targets: tuple[str, ...] = ("ort", "trt")) -> str:
    """The KV-cache form of the onnxruntime graph when `--cache` is not given: shared
    (SCR_SPEC v3 section 3) for every export dtype, quantized or not (a float16 graph's
    attention fuses through its Casts, ort_attention.py), and concat for a folder without
    an onnxruntime graph (`--target trt`)."""
    return CACHE_SHARED if "ort" in targets else CACHE_CONCAT


def check_cache_option(cache: str | None, targets: tuple[str, ...] = ("ort", "trt")) -> None:
    """Refuse an unknown `--cache` or one this form was not verified for, before any work;
    None (not given) is `default_cache`'s choice, always valid."""
    if cache is None:
        return
    if cache not in CACHE_FORMS:
        raise ScredgeError("unknown KV-cache form", received=repr(cache),
                           expected=f"one of {list(CACHE_FORMS)}")
    if cache == CACHE_SHARED and "ort" not in targets:
        raise ScredgeError("the shared KV-cache form is an onnxruntime graph form",
                           received="--cache shared --target trt",
                           expected="--target ort or --target all with --cache shared",
                           fix="drop --cache shared (TensorRT reads the concat form)")


def shared_graph(float_proto, config: SCRConfig):
    """The shared-cache onnxruntime form of a float graph: a copy, fused, then rewritten;
    -> (proto, fusion counts)."""
    from scredge.export.ort_fusions import fuse_for_onnxruntime

    onnx = require("onnx")
    proto = onnx.ModelProto()
    proto.CopyFrom(float_proto)
    counts = fuse_for_onnxruntime(proto, config)
    to_shared_cache(proto, config)
    return proto, counts


def graph_entries() -> dict:
    """A quantized shared-form artifact's additions to its `quantization.graphs` entries
    (SCR_SPEC v3 sections 3-4): onnxruntime reads the shared form, TensorRT the concat."""
    return {"ort": {CACHE_KEY: CACHE_SHARED, "min_onnxruntime": MIN_ONNXRUNTIME_SHARED},
            "trt": {CACHE_KEY: CACHE_CONCAT}}


def float_sections(fused: dict, targets: tuple[str, ...] = ("ort", "trt")) -> dict:
    """A float shared-form artifact's config.json sections: the file each backend reads
    ({backend: file}), each graph's cache form, and what the onnxruntime graph fuses."""
    files = {"ort": ONNX_FILE, "trt": TRT_ONNX_FILE}
    forms = {"ort": CACHE_SHARED, "trt": CACHE_CONCAT}
    return {GRAPHS_KEY: {b: files[b] for b in targets}, CACHE_KEY: {b: forms[b] for b in targets},
            "ort_fused": fused}


def stream_shared(tmp, config: SCRConfig, targets: tuple[str, ...] = ("ort", "trt")):
    """The shared form of the streamed float graph in `tmp` (model.onnx, its weights in
    model.onnx.data), made without loading the weights: the graph is read without its
    data, fused and rewritten, and saved as model.onnx pointing at the same offsets of the
    same data file; the concat graph becomes model.trt.onnx unchanged (with TensorRT among
    `targets`), so both graphs read one copy of every weight. The fusions read only the
    constants they match on (norm weights, scalars), from the data file; -> fusion counts."""
    from scredge.export.ort_fusions import fuse_for_onnxruntime

    onnx = require("onnx")
    path = tmp / ONNX_FILE
    proto = onnx.load(str(path), load_external_data=False)
    counts = fuse_for_onnxruntime(
        proto, config, lambda t: onnx.numpy_helper.to_array(t, base_dir=str(tmp)))
    to_shared_cache(proto, config)
    if "trt" in targets:
        path.replace(tmp / TRT_ONNX_FILE)  # it names model.onnx.data as the data's file
    onnx.save_model(proto, str(path))
    return counts


def write_float_shared(tmp, float_proto, model, dtype: str, log,
                       targets: tuple[str, ...] = ("ort", "trt"), golden=None) -> dict:
    """In the export's temporary folder: the verified float graph moves to the TensorRT
    file (concat form), model.onnx becomes the shared form, verified against the
    reference like the first (replaying `golden`, export/reference_pass.py, when given);
    returns config.json's sections that say so. `float_proto` None: the float graph was
    streamed to the folder, and is rewritten there (`stream_shared`)."""
    from dataclasses import asdict

    from scredge.export.quantized_artifact import _save
    from scredge.export.verify import verify_onnx

    if float_proto is None:
        counts = stream_shared(tmp, model.config, targets)
    else:
        proto, counts = shared_graph(float_proto, model.config)
        for stale in (tmp / ONNX_FILE, tmp / ONNX_DATA_FILE):
            stale.unlink(missing_ok=True)
        if "trt" in targets:
            _save(float_proto, tmp / TRT_ONNX_FILE)
        _save(proto, tmp / ONNX_FILE)
        del proto
    log(f"  shared KV-cache form (GroupQueryAttention in place): {counts.summary()}")
    report = verify_onnx(tmp / ONNX_FILE, model, dtype, golden)
    for line in report.lines():
        log("  shared form: " + line)
    if not report.passed:
        raise ScredgeError(
            "export verification failed: the shared-cache graph misses the logits tier",
            received=report.failures(), expected="SCR_SPEC section 5, logits tier",
            fix="nothing was written; export with --cache concat and report this")
    return float_sections(asdict(counts), targets)
