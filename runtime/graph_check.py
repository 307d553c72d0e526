"""Does config.json describe the graph beside it? Checked when a folder is opened.

A config that disagrees with its graph (another layer count, width, head layout, SCR
layers, vocabulary or window, the hashes recomputed after the edit) would otherwise give
onnxruntime tracebacks about missing inputs, or, for the window, silently wrong decoding.
The graph's own inputs and outputs are compared with `GraphIO.for_config(config)` and the
state shapes of the contract; the window, which no input shape shows, is checked from what
the export recorded in the graph (`WINDOW_METADATA`) and by its behaviour: a decode call
with P = W-1 past positions must return P' = W-1 (a larger window or none returns W, a
smaller one less). The recorded value, inside the hashed graph, is enough when present; the
probe, one decode step, is for graphs without it and runs when its zero cache is small
(`PROBE_BYTES`).
"""

from __future__ import annotations

import numpy as np

from scredge.config import SCRConfig
from scredge.contract import (
    ATTENTION_MASK,
    BATCH,
    CACHE_CONCAT,
    CACHE_SHARED,
    CAPACITY,
    INPUT_IDS,
    LENGTH_INPUTS,
    LOGITS,
    MASK_LENGTH,
    POSITION_IDS,
    SEQUENCE,
    TOKEN_INPUTS,
    TOTAL_SEQUENCE_LENGTH,
    WINDOW_METADATA,
    GraphIO,
    is_carry,
    is_kv,
    present_name,
    state_shape,
    tensor_dtype,
)
from scredge.errors import ScredgeError

# inputs besides the state: input_ids, position_ids, attention_mask (SCR_SPEC section 3)
N_TOKEN_INPUTS = len((*TOKEN_INPUTS, ATTENTION_MASK))

PROBE_BYTES = 64 << 20  # the window probe's zero KV cache, all layers; above it, skipped
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def _refuse(folder, what: str, received: str, expected: str) -> ScredgeError:
    return ScredgeError(f"config.json does not match the graph: {what}",
                        received=received[:400], expected=expected[:400],
                        fix=f"re-export the folder: scredge export ... --out {folder} --force")


def _names_differ(config: SCRConfig, inputs: list[str], outputs: list[str]) -> str | None:
    n_state = 2 * config.n_layers + 2 * len(config.scr_layers)
    if len(inputs) != N_TOKEN_INPUTS + n_state or len(outputs) != 1 + n_state:  # before names:
        return "count"  # a config of 10**9 layers must not build 10**9 names
    io = GraphIO.for_config(config)
    if set(io.inputs) != set(inputs) or set(io.outputs) != set(outputs):
        return "names"
    return None


def check_ort_session(session, config: SCRConfig, kv_dtype, folder,
                      cache: str = CACHE_CONCAT) -> None:
    """Refuse a session whose inputs/outputs, static dims, dtypes or window differ from
    `config` (the artifact's config.json); `cache` is the form config.json names."""
    ins = {i.name: i for i in session.get_inputs()}
    outs = {o.name: o for o in session.get_outputs()}
    if cache == CACHE_SHARED:
        return _check_shared(session, config, kv_dtype, folder, ins, outs)
    differ = _names_differ(config, list(ins), list(outs))
    if differ:
        n_in = N_TOKEN_INPUTS + 2 * config.n_layers + 2 * len(config.scr_layers)
        missing = (sorted(set(GraphIO.for_config(config).inputs) - set(ins))
                   if differ == "names" else [])
        raise _refuse(folder, "other inputs/outputs",
                      f"graph: {len(ins)} inputs, {len(outs)} outputs"
                      + (f"; config names absent from the graph: {missing[:6]}" if missing
                         else ""),
                      f"{n_in} inputs for n_layers {config.n_layers}, "
                      f"scr_layers {list(config.scr_layers)}")
    for name, arg in [*ins.items(), *outs.items()]:
        want = _expected_shape(config, name)
        got = list(arg.shape)
        if len(got) != len(want) or any(
                isinstance(w, int) and g != w for g, w in zip(got, want)):
            raise _refuse(folder, f"shape of {name}", str(got), f"{want} from config.json")
        dtype = _ORT_TYPES.get(arg.type)
        if dtype is None or np.dtype(dtype) != tensor_dtype(name, kv_dtype):
            raise _refuse(folder, f"dtype of {name}", arg.type,
                          f"{tensor_dtype(name, kv_dtype)} (export dtype in config.json)")
    recorded = session.get_modelmeta().custom_metadata_map.get(WINDOW_METADATA)
    if recorded is None:  # an export without the record: ask the graph itself
        probe_window(session, config, kv_dtype, folder)
    elif recorded != str(config.window):
        raise _refuse(folder, "window", f"the graph was exported with window {recorded}",
                      f"window {config.window} as config.json says")


def _check_shared(session, config: SCRConfig, kv_dtype, folder, ins: dict, outs: dict) -> None:
    """The shared-cache form (SCR_SPEC v3 section 3): the concat form's names less
    attention_mask plus the length inputs (int32), caches [B, Hk, C, Dh], and the window
    recorded in the graph (the probe needs the concat form's feed)."""
    io = GraphIO.for_config(config)
    want_in = {*(n for n in io.inputs if n != ATTENTION_MASK), *LENGTH_INPUTS}
    if set(ins) != want_in or set(outs) != set(io.outputs):
        raise _refuse(folder, "other inputs/outputs (shared cache form)",
                      f"graph inputs {sorted(set(ins) ^ want_in)[:6]} differ",
                      f"{len(want_in)} inputs for n_layers {config.n_layers}, "
                      f"scr_layers {list(config.scr_layers)}")
    for name, arg in [*ins.items(), *outs.items()]:
        if name in LENGTH_INPUTS:
            want, dtype = ((), np.int32) if name == TOTAL_SEQUENCE_LENGTH else ((BATCH,),
                                                                               np.int32)
        else:
            want = (state_shape(config, name, past=CAPACITY) if is_kv(name)
                    else _expected_shape(config, name))
            dtype = tensor_dtype(name, kv_dtype)
        got = list(arg.shape)
        if len(got) != len(want) or any(
                isinstance(w, int) and g != w for g, w in zip(got, want)):
            raise _refuse(folder, f"shape of {name}", str(got), f"{want} from config.json")
        if _ORT_TYPES.get(arg.type) != np.dtype(dtype):
            raise _refuse(folder, f"dtype of {name}", arg.type, str(np.dtype(dtype)))
    recorded = session.get_modelmeta().custom_metadata_map.get(WINDOW_METADATA)
    if recorded != str(config.window):
        raise _refuse(folder, "window", f"the graph records window {recorded}",
                      f"window {config.window} as config.json says")


def _expected_shape(config: SCRConfig, name: str) -> tuple:
    if name in (INPUT_IDS, POSITION_IDS):
        return (BATCH, SEQUENCE)
    if name == ATTENTION_MASK:
        return (BATCH, MASK_LENGTH)
    if name == LOGITS:
        return (BATCH, SEQUENCE, config.vocab_size)
    return state_shape(config, name)


def probe_window(session, config: SCRConfig, kv_dtype, folder) -> None:
    """One decode call at P = W-1 (B = 1, zero cache): the graph must return P' = W-1."""
    if config.window is None:
        return
    past = config.window - 1
    kv_bytes = 2 * config.n_layers * config.n_kv_heads * past * config.head_dim * \
        np.dtype(kv_dtype).itemsize
    if kv_bytes > PROBE_BYTES:
        return
    feed = {INPUT_IDS: np.zeros((1, 1), np.int64),
            POSITION_IDS: np.full((1, 1), past, np.int64),
            ATTENTION_MASK: np.ones((1, past + 1), np.int64)}
    for arg in session.get_inputs():
        if is_kv(arg.name) or is_carry(arg.name):
            shape = state_shape(config, arg.name, batch=1, past=past)
            fill = np.ones if arg.name.endswith(".den") else np.zeros
            feed[arg.name] = fill(shape, dtype=tensor_dtype(arg.name, kv_dtype))
    kv_out = next(present_name(n) for n in feed if is_kv(n))
    try:
        got = session.run([kv_out], feed)[0].shape[2]
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise _refuse(folder, "window", f"the graph refused a call at P = W-1 = {past}: "
                      f"{type(exc).__name__}: {exc}", f"window {config.window}") from exc
    if got != past:
        raise _refuse(folder, "window",
                      f"a decode call with {past} past positions returned {got}",
                      f"{past} (window {config.window} keeps W-1 positions)")


def check_trt_entry(entry: dict, config: SCRConfig, folder) -> None:
    """The engine entry's recorded optimisation profiles against config.json: the same
    inputs, the contract's static dims, and no profile holding more than W-1 past
    positions. Checked before TensorRT is imported."""
    profiles = entry.get("profiles")
    if not isinstance(profiles, list) or not profiles or not all(
            isinstance(p, dict) for p in profiles):
        raise _refuse(folder, f"engine {entry.get('file')!r} has no recorded profiles",
                      repr(profiles)[:200], "a list of profiles per input")
    n_state = 2 * config.n_layers + 2 * len(config.scr_layers)
    longest = 0
    for prof in profiles:
        if (len(prof) != N_TOKEN_INPUTS + n_state
                or set(prof) != set(GraphIO.for_config(config).inputs)):
            raise _refuse(folder, f"inputs of engine {entry.get('file')!r}",
                          f"{len(prof)} profile inputs",
                          f"{N_TOKEN_INPUTS + n_state} inputs for n_layers {config.n_layers}, "
                          f"scr_layers {list(config.scr_layers)}")
        for name, shapes in prof.items():
            want = _expected_shape(config, name)
            if not (isinstance(shapes, list) and len(shapes) == 3 and all(
                    isinstance(s, list) and len(s) == len(want)
                    and all(isinstance(d, int) and not isinstance(d, bool) for d in s)
                    for s in shapes)):
                raise _refuse(folder, f"profile of {name}", repr(shapes)[:200],
                              f"[min, opt, max] shapes of rank {len(want)}")
            for axis, w in enumerate(want):
                if isinstance(w, int) and any(s[axis] != w for s in shapes):
                    raise _refuse(folder, f"engine shape of {name}", repr(shapes),
                                  f"{want} from config.json")
            if is_kv(name):
                longest = max(longest, shapes[2][2])
    # the builder sizes a windowed model's cache profile to exactly W-1 past positions
    if config.window is not None and longest != config.window - 1:
        raise _refuse(folder, f"window of engine {entry.get('file')!r}",
                      f"its profiles hold up to {longest} past positions",
                      f"{config.window - 1} (window {config.window})")
