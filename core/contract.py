"""The contract between the parts (SCR_SPEC sections 2-4), defined once.

The exporter writes these names, the runtime, the TensorRT builder and plugin, and the
parity tools read them; no other module spells them out. Pure Python (numpy only), so
the torch-free layers import it without importing the exporter.

- the `scr.Realign` op: domain, type, version, attributes, input/output names (section 2)
- the decoder graph's inputs and outputs, and the state layout: which tensor is a KV
  cache or an SCR carry, its shape and dtype, and which input takes an output next call
  (section 3)
- the artifact folder's file names (section 4)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scredge.config import SCRConfig

# ---- the Realign op (SCR_SPEC section 2) ----------------------------------------------
DOMAIN = "scr"
OP_TYPE = "Realign"
OP_VERSION = 1
# on every node: how the TensorRT ONNX parser finds the plugin (name Realign, version 1,
# namespace scr)
PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE = OP_TYPE, "1", DOMAIN
PLUGIN_ATTRS = {"plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION}
# onnxruntime's contrib-op domain (MatMulNBits, the onnxruntime form's fused kernels)
ORT_DOMAIN = "com.microsoft"
REALIGN_INPUTS = ("h", "m_prev", "num_in", "den_in", "w_r", "b_r", "w_g", "b_g")
REALIGN_OUTPUTS = ("m", "num_out", "den_out")

# ---- the decoder graph (SCR_SPEC section 3) -------------------------------------------
INPUT_IDS = "input_ids"
POSITION_IDS = "position_ids"
# v2: [B, P+T] int64, 1 = a real token, 0 = a pad slot of the cache (a joined batch)
ATTENTION_MASK = "attention_mask"
LOGITS = "logits"
TOKEN_INPUTS = (INPUT_IDS, POSITION_IDS)
# config.json's top-level "graph_version": the decoder graph contract of SCR_SPEC section 3
# (2 = with `attention_mask`); a folder without it is version 1
GRAPH_VERSION_KEY = "graph_version"
GRAPH_VERSION = 2
KV = ("key", "value")
# v3 (SCR_SPEC section 3): the shared ("in-place") KV-cache form of the onnxruntime graph.
# Its caches are [B, Hk, C, Dh] buffers of capacity C that the graph updates in place
# (past and present bound to the same memory); instead of `attention_mask` it reads each
# row's length: `seqlens_k` [B] int32 = cached tokens after the call minus 1,
# `total_sequence_length` [] int32 = the longest row's count after the call, and
# `query_seqlens` [B] int32 = the new tokens of each row in this call.
GRAPH_VERSION_V3 = 3  # written only by an artifact that uses a v3 feature
SEQLENS_K = "seqlens_k"
TOTAL_SEQUENCE_LENGTH = "total_sequence_length"
QUERY_SEQLENS = "query_seqlens"
LENGTH_INPUTS = (SEQLENS_K, TOTAL_SEQUENCE_LENGTH, QUERY_SEQLENS)
CAPACITY = "cache_capacity"  # the symbolic C of a shared cache's shape
# config.json: a float artifact's top-level "cache" maps each backend to its graph's form,
# {"ort": "shared", "trt": "concat"}; a quantized one's `quantization.graphs.<backend>`
# entry holds "cache" itself. Absent: "concat".
CACHE_KEY = "cache"
CACHE_CONCAT, CACHE_SHARED = "concat", "shared"
CACHE_FORMS = (CACHE_CONCAT, CACHE_SHARED)
# config.json: the graph file each backend reads, {backend: file} (a float artifact whose
# backends read different graphs; a quantized one names them in its `quantization` section)
GRAPHS_KEY = "graphs"
SHARED_MIN_ONNXRUNTIME = "1.32"  # GroupQueryAttention with query_seqlens, window as verified
CARRY = ("num", "den")
_PAST_KV, _PRESENT_KV = "past_key_values.", "present."
_PAST_SCR, _PRESENT_SCR = "scr_past.", "scr_present."


def past_kv(layer: int, kv: str) -> str:
    return f"{_PAST_KV}{layer}.{kv}"


def present_kv(layer: int, kv: str) -> str:
    return f"{_PRESENT_KV}{layer}.{kv}"


def past_carry(layer: int, part: str) -> str:
    return f"{_PAST_SCR}{layer}.{part}"


def present_carry(layer: int, part: str) -> str:
    return f"{_PRESENT_SCR}{layer}.{part}"


def is_kv(name: str) -> bool:
    """A KV-cache tensor, input or output."""
    return name.startswith((_PAST_KV, _PRESENT_KV))


def is_carry(name: str) -> bool:
    """An SCR carry tensor (num or den), input or output."""
    return name.startswith((_PAST_SCR, _PRESENT_SCR))


def is_state_output(name: str) -> bool:
    return name.startswith((_PRESENT_KV, _PRESENT_SCR))


def past_name(output: str) -> str:
    """The input that takes a state output next call: present.* -> past_key_values.*,
    scr_present.* -> scr_past.*."""
    if output.startswith(_PRESENT_SCR):
        return _PAST_SCR + output[len(_PRESENT_SCR):]
    if output.startswith(_PRESENT_KV):
        return _PAST_KV + output[len(_PRESENT_KV):]
    raise ValueError(f"not a state output: {output!r}")


def present_name(past: str) -> str:
    """The output a state input becomes: the inverse of `past_name`."""
    if past.startswith(_PAST_SCR):
        return _PRESENT_SCR + past[len(_PAST_SCR):]
    if past.startswith(_PAST_KV):
        return _PRESENT_KV + past[len(_PAST_KV):]
    raise ValueError(f"not a state input: {past!r}")


@dataclass(frozen=True)
class GraphIO:
    """Input and output names of a config's decoder graph, in graph order."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @classmethod
    def for_config(cls, c: SCRConfig) -> GraphIO:
        layers, scr = range(c.n_layers), c.scr_layers
        inputs = (
            *TOKEN_INPUTS, ATTENTION_MASK,
            *(past_kv(i, kv) for i in layers for kv in KV),
            *(past_carry(i, p) for i in scr for p in CARRY),
        )
        outputs = (
            LOGITS,
            *(present_kv(i, kv) for i in layers for kv in KV),
            *(present_carry(i, p) for i in scr for p in CARRY),
        )
        return cls(inputs, outputs)

    @property
    def state_inputs(self) -> tuple[str, ...]:
        return tuple(n for n in self.inputs if is_kv(n) or is_carry(n))

    @property
    def state_outputs(self) -> tuple[str, ...]:
        return tuple(n for n in self.outputs if is_state_output(n))


# The window the export built into the graph, recorded in its metadata_props (no input
# shape shows it); a config.json that says otherwise is refused on load.
WINDOW_METADATA = "scredge.window"

# Symbolic dimension names as exported; state shapes below use the same names.
BATCH, SEQUENCE, PAST, PRESENT = "batch", "sequence", "past_sequence", "present_sequence"
MASK_LENGTH = "past_sequence + sequence"


def state_shape(c: SCRConfig, name: str, batch: int | str = BATCH,
                past: int | str = PAST) -> tuple[int | str, ...]:
    """The shape of a state tensor (input or output): KV [B, Hk, P, Dh], num [B, D],
    den [B, 1]. `past` is P for an input, P' for an output."""
    if is_kv(name):
        return (batch, c.n_kv_heads, past, c.head_dim)
    if is_carry(name):
        return (batch, c.d_model) if name.endswith(".num") else (batch, 1)
    raise ValueError(f"not a state tensor: {name!r}")


def tensor_dtype(name: str, kv_dtype: np.dtype) -> np.dtype:
    """Token inputs are int64; logits and SCR carries float32 whatever the model dtype;
    the KV cache is in the model dtype."""
    if name in TOKEN_INPUTS or name == ATTENTION_MASK:
        return np.dtype(np.int64)
    if name == LOGITS or is_carry(name):
        return np.dtype(np.float32)
    if is_kv(name):
        return np.dtype(kv_dtype)
    raise ValueError(f"not a decoder graph tensor: {name!r}")


# ---- the artifact folder (SCR_SPEC section 4) -----------------------------------------
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
ONNX_DATA_FILE = "model.onnx.data"
MANIFEST_FILE = "manifest.json"
GOLDEN_FILE = "parity/golden.npz"  # the reference outputs `scredge parity` compares with
ORT_OPTIMIZED_FILE = "model.ort-{device}.onnx"  # `scredge build --backend ort`, per device
ENGINE_FILE = "model.{tag}.engine"  # `scredge build` TensorRT engines, tagged by version/GPU
# Hugging Face tokenizer files an artifact may carry (SCR_SPEC section 4; listed in the
# manifest like every file): tokenizer.json is the tokenizer itself; the others are read
# when present: special tokens and chat template, the template as its own file
# (transformers >= 4.43 writes it there), legacy special tokens, the eos ids generation
# stops on
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, CHAT_TEMPLATE_FILE,
                   SPECIAL_TOKENS_MAP_FILE, GENERATION_CONFIG_FILE)
# config.json section describing the tokenizer: {"files": [...], "eos_token_ids": [...]}
TOKENIZER_KEY = "tokenizer"
# weight-only quantized artifacts (SCR_SPEC sections 4 and 5)
QUANT_CONFIG_KEY = "quantization"  # config.json section: bits, block size, method, graphs
TRT_ONNX_FILE = "model.trt.onnx"  # the TensorRT form; model.onnx is the onnxruntime form
HELDOUT_FILE = "parity/heldout.npz"  # the reference's held-out log-probs (quantized tier)
# v3 slim folders: config.json's "graphs" maps each backend the folder targets ("ort",
# "trt") to the graph it reads (absent: an older folder, both backends); its export section's
# "reference" records the float32 reference weights' sha256 (what golden and held-out files
# name) and whether WEIGHTS_FILE was kept (`scredge export --keep-reference`)
GRAPHS_KEY = "graphs"
REFERENCE_KEY = "reference"
BACKENDS = ("ort", "trt")
KEEP_REFERENCE_FLAG = "--keep-reference"
FORMAT_VERSION = 1  # bump when a reader of the old layout would misread the new one
# `scredge export-hf`: a transformers folder (config.json, model.safetensors = WEIGHTS_FILE,
# generation_config.json, tokenizer files) plus these: the SCR tensors transformers has no
# layer for (scredge names, the scredge config in the metadata), a README, and the record
# of the files written (what a later --force may replace)
HF_SCR_FILE = "scredge_scr_layers.safetensors"
HF_README_FILE = "README.md"
HF_EXPORT_RECORD = "scredge_export_hf.json"
