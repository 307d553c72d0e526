"""Small GGUF files written here with the `gguf` package's own GGUFWriter (no download): a
transformers model's weights laid out as llama.cpp's converter lays them out (q/k rows
permuted for llama and mistral), each tensor in the type asked for, with a BPE tokenizer and
chat template in the metadata. The material the --from-gguf tests run on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# the reader's own name table: the tests' oracle for the names is transformers' GGUF
# loader, which reads these files with a table of its own
from scredge.export.gguf_import import LAYER_NAMES, TOP_NAMES, hf_name


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (the rotary halves
    interleaved per head), written from its description: rows of each head reordered from
    [half 0, half 1] to pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def random_kquant_bytes(rows: int, cols: int, qtype, seed: int) -> np.ndarray:
    """Valid Q4_K / Q6_K blocks with random contents (gguf.quants cannot quantize to them):
    random quants and sub-scales, the float16 super-block scales set to small finite
    values."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    scale = np.array([0.002], np.float16).view(np.uint8)
    if qtype == gguf.GGMLQuantizationType.Q4_K:  # d, dmin first
        raw[..., 0:2], raw[..., 2:4] = scale, np.array([0.001], np.float16).view(np.uint8)
    else:  # Q6_K: d last
        raw[..., size - 2:size] = scale
    return raw.reshape(rows, cols // block * size)


def write_gguf(path: Path, model, arch: str, types: dict[str, str], tokenizer=None,
               chat_template: str | None = None, bos: str | None = None,
               eos: str | None = None) -> dict[str, np.ndarray]:
    """Write `model` (a transformers Llama/Mistral/Qwen2) to `path` with each GGUF tensor in
    `types[name]` (default F32); returns the float32 values the file holds, by transformers
    name (dequantized, q/k rows in transformers' order) for the caller's own oracle."""
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(getattr(cfg, "rope_theta", None)
                               or cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    if tokenizer is not None:
        _add_tokenizer(w, tokenizer, chat_template, bos, eos)
    held = {}
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    for name, value in _gguf_tensors(state, cfg.num_hidden_layers):
        hf = hf_name(name)
        if arch in ("llama", "mistral") and name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = cfg.num_attention_heads if "attn_q" in name else cfg.num_key_value_heads
            value = llama_cpp_permute(value, heads)
        qtype = gguf.GGMLQuantizationType[types.get(name, "F32")]
        data = _encode(value, qtype, seed=len(held))
        w.add_tensor(name, data, raw_dtype=qtype)
        back = (gguf.quants.dequantize(data, qtype) if qtype.name not in ("F32", "F16")
                else data.astype(np.float32)).reshape(value.shape)
        if arch in ("llama", "mistral") and name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = cfg.num_attention_heads if "attn_q" in name else cfg.num_key_value_heads
            back = back.reshape(heads, back.shape[0] // heads // 2, 2, -1).swapaxes(1, 2) \
                .reshape(back.shape)
        held[hf] = back.astype(np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return held


def write_other_architecture(path: Path, arch: str = "gpt2") -> None:
    """A well-formed GGUF of an architecture --from-gguf does not map (one tensor)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _encode(value: np.ndarray, qtype, seed: int) -> np.ndarray:
    import gguf

    if qtype.name == "F32":
        return value.astype(np.float32)
    if qtype.name == "F16":
        return value.astype(np.float16)
    if qtype.name in ("Q4_K", "Q6_K"):
        return random_kquant_bytes(value.shape[0], value.shape[1], qtype, seed)
    return gguf.quants.quantize(value.astype(np.float32), qtype)


def _gguf_tensors(state: dict, layers: int):
    for gname, hname in TOP_NAMES.items():
        if hname in state:
            yield gname, state[hname]
    for i in range(layers):
        for gname, hname in LAYER_NAMES.items():
            if f"model.layers.{i}.{hname}" in state:
                yield f"blk.{i}.{gname}", state[f"model.layers.{i}.{hname}"]


def _add_tokenizer(w, tok, chat_template, bos, eos) -> None:
    """A byte-level BPE (`tokenizers.Tokenizer`) as llama.cpp's gpt2-type tokenizer
    metadata: tokens by id, types (3 = control for added specials), merges."""
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    specials = {a["content"] for a in data["added_tokens"] if a.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in specials else 1 for t in tokens])
    w.add_token_merges(merges)
    if bos is not None:
        w.add_bos_token_id(vocab[bos])
    if eos is not None:
        w.add_eos_token_id(vocab[eos])
    w.add_add_bos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)
