"""`scredge export --from-gguf FILE`: a Llama-family GGUF file (llama.cpp's format) as a
float32 reference model, with the tokenizer and chat template the file carries.

The file is read with the `gguf` package (llama.cpp's own Python reader: memory-mapped, so
only the tensor being converted is in memory besides the model) and dequantized with its
`gguf.quants` (F32, F16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K; any other type is refused by name
before anything is allocated). llama.cpp stores the q and k projections of llama and
mistral models with their rows permuted for its rotary kernel; they are permuted back, as
transformers' GGUF loader does. The tokenizer is rebuilt from the file's metadata by
transformers' GGUF tokenizer converter (the one `AutoTokenizer.from_pretrained(...,
gguf_file=...)` uses) and saved as tokenizer.json + tokenizer_config.json +
chat_template.jinja, the files every other source brings. SCR layers are added at gamma = 0,
as for --from-llama, so the export first reproduces the file's model.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import weakref
from collections import Counter
from pathlib import Path

import numpy as np

from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.gguf_file import check_gguf_header
from scredge.hf_config import FAMILIES, llama_config

# the tensor types `gguf.quants` dequantizes that we accept (SCR_SPEC: a float reference)
TENSOR_TYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K")
PERMUTED_QK = ("llama", "mistral")  # archs whose q/k rows llama.cpp's converter permutes
_LAYER = re.compile(r"blk\.(\d+)\.(.+)")
_LAYER_NAMES = {  # GGUF tensor (in a block) -> Hugging Face Llama name (in a layer)
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias", "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
              "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
_FIX = "export a Llama, Mistral or Qwen2 GGUF as llama.cpp's convert_hf_to_gguf.py writes it"


def hf_name(name: str) -> str | None:
    """A GGUF tensor name -> its Hugging Face Llama name; None for one we do not know."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    m = _LAYER.fullmatch(name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    return None


def open_gguf(path: Path):
    """A GGUFReader over `path`, every tensor inside the file; a ScredgeError for anything
    that is not a whole GGUF file (nothing but the header index is read)."""
    gguf = require("gguf")
    path = Path(path)
    if not path.is_file():
        raise ScredgeError("GGUF file not found", received=str(path),
                           expected="a .gguf file (llama.cpp's format)")
    check_gguf_header(path)  # before the reader walks what the header claims
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError,
            OSError, MemoryError) as exc:
        raise ScredgeError("not a readable GGUF file (truncated or corrupt?)",
                           received=f"{path}: {type(exc).__name__}: {exc}"[:300],
                           expected="a whole GGUF v2/v3 file",
                           fix="download or convert the file again") from exc
    size = path.stat().st_size
    for t in reader.tensors:
        if int(t.data_offset) + int(t.n_bytes) > size:
            raise ScredgeError("the GGUF file is truncated", received=f"{path}: {size} bytes",
                               expected=f"tensor {t.name} to end at byte "
                                        f"{int(t.data_offset) + int(t.n_bytes)}",
                               fix="download or convert the file again")
    return reader


def field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        return f.contents()
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise ScredgeError("a GGUF metadata field cannot be read", received=f"{key}: {exc}",
                           fix="download or convert the file again") from exc


def architecture(reader) -> str:
    arch = field(reader, "general.architecture")
    if arch not in FAMILIES:
        raise ScredgeError("unsupported GGUF architecture", received=repr(arch),
                           expected=f"one of {list(FAMILIES)} (a Llama-family model)",
                           fix=_FIX)
    return arch


def check_tensor_types(reader, path: Path) -> Counter:
    """Refuse every tensor type we do not dequantize, by name, before any is read."""
    bad = [f"{t.name}: {t.tensor_type.name}" for t in reader.tensors
           if t.tensor_type.name not in TENSOR_TYPES]
    if bad:
        raise ScredgeError("the GGUF file holds tensor types scredge does not read",
                           received=f"{path.name}: {', '.join(bad[:6])}"
                                    + (f" and {len(bad) - 6} more" if len(bad) > 6 else ""),
                           expected=f"tensors of {', '.join(TENSOR_TYPES)}",
                           fix="convert the model to GGUF again with one of those types "
                               "(e.g. llama.cpp's --outtype f16 or q8_0)")
    return Counter(t.tensor_type.name for t in reader.tensors)


def hf_config(reader, arch: str) -> dict:
    """The file's metadata as the Hugging Face config.json that transformers derives from it,
    for `hf_config.llama_config` (which refuses what the spec cannot express)."""
    names = {t.name for t in reader.tensors}

    def key(name, default=None):
        return field(reader, f"{arch}.{name}", default)

    required = ("embedding_length", "block_count", "feed_forward_length",
                "attention.head_count")
    missing = [f"{arch}.{k}" for k in required if key(k) is None]
    if missing or "token_embd.weight" not in names:
        raise ScredgeError("the GGUF file lacks what a Llama-family model needs",
                           received=f"missing {missing or ['token_embd.weight']}", fix=_FIX)
    embed = next(t for t in reader.tensors if t.name == "token_embd.weight")
    heads = int(key("attention.head_count"))
    hf = {"model_type": arch, "hidden_size": int(key("embedding_length")),
          "num_hidden_layers": int(key("block_count")),
          "intermediate_size": int(key("feed_forward_length")),
          "num_attention_heads": heads,
          "num_key_value_heads": int(key("attention.head_count_kv", heads)),
          "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-6)),
          "rope_theta": float(key("rope.freq_base", 10_000.0)),
          "vocab_size": int(embed.shape[-1]),
          "max_position_embeddings": int(key("context_length", 2048)),
          "tie_word_embeddings": "output.weight" not in names,
          "eos_token_id": field(reader, "tokenizer.ggml.eos_token_id"),
          "bos_token_id": field(reader, "tokenizer.ggml.bos_token_id")}
    head_dim = hf["hidden_size"] // heads
    if key("attention.key_length") is not None:
        hf["head_dim"] = int(key("attention.key_length"))
    rot = key("rope.dimension_count")
    if rot is not None and int(rot) != hf.get("head_dim", head_dim):
        hf["partial_rotary_factor"] = int(rot) / hf.get("head_dim", head_dim)
    scaling = key("rope.scaling.type")
    if scaling not in (None, "none"):
        hf["rope_scaling"] = {"rope_type": scaling, "factor": key("rope.scaling.factor")}
    if "rope_freqs.weight" in names:  # llama 3.1's frequency factors, stored as a tensor
        hf["rope_scaling"] = {"rope_type": "llama3 (rope_freqs tensor)"}
    if key("attention.sliding_window") is not None:
        hf["sliding_window"] = int(key("attention.sliding_window"))
        hf["use_sliding_window"] = True
    hf["attention_bias"] = any(n.endswith(".attn_q.bias") for n in names)
    return hf


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (halves interleaved per head)."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def dequantized(t) -> np.ndarray:
    """One tensor as float32 in numpy (row-major) order."""
    quants = require("gguf.quants")
    shape = tuple(int(d) for d in reversed(t.shape))
    if t.tensor_type.name in ("F32", "F16"):
        return np.asarray(t.data, dtype=np.float32).reshape(shape)
    return quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False) \
        .reshape(shape)


def read_tensors(reader, arch: str, config, into: dict) -> None:
    """Copy every tensor into `into` (name -> torch parameter), checked by name and shape
    first; q/k unpermuted for llama and mistral."""
    from scredge.ref.checkpoint import check_tensor_names_and_shapes

    torch = require("torch")
    unknown = [t.name for t in reader.tensors if hf_name(t.name) is None]
    if unknown:
        raise ScredgeError("the GGUF file holds tensors a Llama-family model does not have",
                           received=", ".join(unknown[:6]), fix=_FIX)
    shapes = {hf_name(t.name): tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}
    if config.tie_embeddings:
        shapes.pop("lm_head.weight", None)
    expected = {k: s for k, s in config.parameter_shapes().items() if ".scr." not in k}
    check_tensor_names_and_shapes(shapes, expected, "the GGUF file's tensors")
    with torch.no_grad():
        for t in reader.tensors:
            name = hf_name(t.name)
            if name not in into:
                continue
            w = dequantized(t)
            if arch in PERMUTED_QK and t.name.endswith(("attn_q.weight", "attn_k.weight")):
                w = _unpermute(w, config.n_heads if "attn_q" in t.name else config.n_kv_heads)
            into[name].copy_(torch.from_numpy(np.array(w, dtype=np.float32)))  # writable


def gguf_tokenizer(path: Path, hf: dict, vocab: int):
    """The file's tokenizer and chat template as Hugging Face tokenizer files in a temporary
    folder (removed when the returned TokenizerFiles is collected); None without one."""
    from scredge.tokenizer_files import find_tokenizer

    if hf.get("eos_token_id") is None and hf.get("bos_token_id") is None:
        return None
    transformers = require("transformers")
    folder = Path(tempfile.mkdtemp(prefix="scredge-gguf-tokenizer-"))
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        tok.save_pretrained(str(folder))
        files = find_tokenizer(folder, hf, vocab)
    except ScredgeError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    except Exception as exc:  # noqa: BLE001 - transformers' converter raises many kinds
        shutil.rmtree(folder, ignore_errors=True)
        raise ScredgeError("the GGUF file's tokenizer cannot be rebuilt",
                           received=f"{type(exc).__name__}: {exc}"[:300],
                           expected="tokenizer.ggml.* metadata transformers converts (llama "
                                    "SentencePiece or gpt2 BPE)", fix=_FIX) from exc
    weakref.finalize(files, shutil.rmtree, folder, True)
    return files


def load_gguf(path: Path, scr_layers: tuple[int, ...] | None = None, seed: int = 0):
    """A Llama-family GGUF as a float32 reference with SCR layers at gamma = 0
    (scredge.ref.hf_import.HFModel), every check before the model is allocated."""
    from scredge.ref.hf_import import HFModel
    from scredge.ref.model import build_model

    path = Path(path)
    reader = open_gguf(path)
    arch = architecture(reader)
    types = check_tensor_types(reader, path)
    hf = hf_config(reader, arch)
    config = llama_config(hf, scr_layers)
    tokenizer = gguf_tokenizer(path, hf, config.vocab_size)
    model = build_model(config, seed, gamma=0.0)
    read_tensors(reader, arch, config, dict(model.named_parameters()))
    description = {"kind": "gguf", "file": str(path.absolute()), "architecture": arch,
                   "name": field(reader, "general.name"), "tensor_types": dict(types),
                   "scr_seed": seed, "gamma_init": 0.0}
    return HFModel(model.eval(), description, tokenizer)
