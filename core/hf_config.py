"""A Hugging Face Llama-family `config.json` -> SCRConfig (SCR_SPEC section 1, v2 fields).

Each setting is read the way transformers reads it, so the exported model is the one
transformers would run from the same folder; whatever the spec cannot express is refused by
name, never dropped.
"""

from __future__ import annotations

from scredge.config import ROPE_SCALING_KEYS, RopeScaling, SCRConfig
from scredge.errors import ScredgeError
from scredge.limits import MAX_MODEL_LAYERS

# model_type -> the causal-LM class transformers builds for it
FAMILIES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
            "qwen2": "Qwen2ForCausalLM"}
SUPPORTED_ARCHITECTURES = tuple(FAMILIES.values())
DEFAULT_ROPE_THETA = 10_000.0  # transformers' default_theta, used when a config names none
# keys a rope dict may hold beyond its type's own (ROPE_SCALING_KEYS)
_ROPE_COMMON_KEYS = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}


def model_family(hf: dict) -> str:
    """'llama' | 'mistral' | 'qwen2', from model_type (or, lacking it, architectures)."""
    archs = hf.get("architectures") or []
    if any(a not in SUPPORTED_ARCHITECTURES for a in archs):
        raise ScredgeError("unsupported Hugging Face architecture", received=archs,
                           expected=f"one of {list(SUPPORTED_ARCHITECTURES)}")
    family = hf.get("model_type")
    if family is None and archs:
        family = next(f for f, a in FAMILIES.items() if a == archs[0])
    if family not in FAMILIES:
        raise ScredgeError("unsupported Hugging Face model_type", received=repr(family),
                           expected=f"one of {list(FAMILIES)}")
    if archs and FAMILIES[family] not in archs:
        raise ScredgeError("config.json's model_type and architectures disagree",
                           received=f"model_type {family!r}, architectures {archs}",
                           expected=f"architectures [{FAMILIES[family]!r}]")
    return family


def rope_settings(hf: dict) -> tuple[float, RopeScaling | None, list[str]]:
    """(rope_theta, rope_scaling, what cannot be expressed), as transformers resolves them.

    transformers (5.x) takes a non-empty `rope_scaling` over `rope_parameters` (a config
    holding both runs WITH the scaling), and its theta from that dict, else from a top-level
    `rope_theta`, else 10000; `type` is the old name of `rope_type`."""
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    refused: list[str] = []
    if not isinstance(rope, dict):
        return DEFAULT_ROPE_THETA, None, [f"rope settings {rope!r} (not an object)"]
    theta = rope.get("rope_theta", hf.get("rope_theta", DEFAULT_ROPE_THETA))
    if not isinstance(theta, (int, float)) or isinstance(theta, bool):
        return DEFAULT_ROPE_THETA, None, [f"rope_theta {theta!r} (not a number)"]
    theta = float(theta)
    kind = rope.get("rope_type", rope.get("type", "default"))
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        refused.append(f"partial_rotary_factor={partial} (rotary on the whole head only)")
    if kind != "default" and kind not in ROPE_SCALING_KEYS:
        refused.append(f"rope scaling {kind!r} (only 'linear' and 'llama3')")
        return theta, None, refused
    own = set(ROPE_SCALING_KEYS.get(kind, ()))
    extra = sorted(set(rope) - _ROPE_COMMON_KEYS - own)
    if extra:
        refused.append(f"rope settings {extra} for rope type {kind!r}")
    if kind == "default" or refused:
        return theta, None, refused
    values = {k: rope.get(k) for k in own}
    if kind == "llama3":
        # transformers: a top-level original_max_position_embeddings wins, else the dict's,
        # else max_position_embeddings
        values["original_max_position_embeddings"] = hf.get(
            "original_max_position_embeddings",
            rope.get("original_max_position_embeddings", hf.get("max_position_embeddings")))
    missing = sorted(k for k, v in values.items() if v is None)
    if missing:
        return theta, None, [f"rope scaling {kind!r} without {missing}"]
    return theta, RopeScaling.from_dict({"rope_type": kind, **values}), refused


def attention_window(hf: dict, family: str, n_layers: int) -> tuple[int | None, list[str]]:
    """The one window every layer uses (None = full causal), as transformers applies it."""
    if family == "llama":
        return None, []  # LlamaAttention has no sliding window, whatever the config says
    if family == "mistral":
        return hf.get("sliding_window"), []
    # qwen2: the window applies only when use_sliding_window, to the layers layer_types
    # marks (by default those from max_window_layers on)
    window = hf.get("sliding_window") if hf.get("use_sliding_window", False) else None
    types = hf.get("layer_types") or [
        "sliding_attention" if window is not None and i >= hf.get("max_window_layers", 28)
        else "full_attention" for i in range(n_layers)]
    per_layer = {window if t == "sliding_attention" else None for t in types}
    if len(per_layer) > 1:
        return None, [f"layer_types mixing full and sliding-window layers ({types}); the spec "
                      "has one window for every layer"]
    return per_layer.pop(), []


# every field the mapping reads, by the JSON type it must have (null allowed where it means
# "none" (no window, no head_dim, ...), not for the numbers the model computes with)
_REQUIRED_INTS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size")
_FIELD_TYPES = {
    **{k: "int" for k in (*_REQUIRED_INTS, "head_dim", "num_key_value_heads", "sliding_window",
                           "max_window_layers", "original_max_position_embeddings",
                           "max_position_embeddings")},
    **{k: "number" for k in ("rms_norm_eps", "rope_theta", "partial_rotary_factor")},
    **{k: "bool" for k in ("tie_word_embeddings", "use_sliding_window", "mlp_bias",
                           "attention_bias")},
    **{k: "str" for k in ("hidden_act", "model_type")},
    **{k: "list of str" for k in ("architectures", "layer_types")},
}
_CHECKS = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "list of str": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
}


def check_hf_fields(hf: object) -> dict:
    """config.json's fields that `llama_config` reads, each of its JSON type (the one place
    they are checked): a wrong type is refused by name, not a traceback inside the mapping."""
    if not isinstance(hf, dict):
        raise ScredgeError("the Hugging Face config.json is not a JSON object",
                           received=type(hf).__name__, expected="an object of settings")
    for key in _REQUIRED_INTS:
        if hf.get(key) is None:
            raise ScredgeError(f"the Hugging Face config.json lacks '{key}'",
                               received=sorted(hf)[:30], expected=f"'{key}': an integer")
    for key, kind in _FIELD_TYPES.items():
        value = hf.get(key)
        if key in hf and (value is not None or kind == "number") and not _CHECKS[kind](value):
            raise ScredgeError(f"config.json field '{key}' has the wrong type",
                               received=repr(value)[:80], expected=kind)
    for key in ("rope_scaling", "rope_parameters"):
        if hf.get(key) is not None and not isinstance(hf[key], dict):
            raise ScredgeError(f"config.json field '{key}' has the wrong type",
                               received=repr(hf[key])[:80], expected="an object or null")
    if not 1 <= hf["num_hidden_layers"] <= MAX_MODEL_LAYERS:
        raise ScredgeError("config.json's num_hidden_layers is out of range",
                           received=hf["num_hidden_layers"],
                           expected=f"1..{MAX_MODEL_LAYERS}")
    return hf


def llama_config(hf: dict, scr_layers: tuple[int, ...] | None) -> SCRConfig:
    """Map a HF Llama / Mistral / Qwen2 config to SCRConfig, refusing what the spec cannot
    express."""
    family = model_family(check_hf_fields(hf))
    refused = []
    if hf.get("hidden_act", "silu") != "silu":
        refused.append(f"hidden_act={hf['hidden_act']!r} (only 'silu')")
    if hf.get("mlp_bias"):
        refused.append("mlp_bias=true (no biases in the spec's MLP)")
    if family == "llama" and hf.get("attention_bias"):
        refused.append("attention_bias=true on a llama model (its o_proj carries a bias too; "
                       "the spec's attention_bias is q, k, v only)")
    if hf.get("quantization_config"):
        refused.append("quantization_config (quantized weights; export a float checkpoint)")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim * heads != hf["hidden_size"]:
        refused.append(f"head_dim={head_dim} != hidden_size/num_attention_heads")
    theta, scaling, rope_refused = rope_settings(hf)
    n_layers = hf["num_hidden_layers"]
    window, window_refused = attention_window(hf, family, n_layers)
    refused += rope_refused + window_refused
    if refused:
        raise ScredgeError("the Hugging Face model uses fields scredge cannot export",
                           received="; ".join(refused),
                           expected="a Llama-family model the spec expresses: SwiGLU, rotary "
                                    "(plain, linear or llama3), q/k/v biases only as Qwen2, "
                                    "one attention window for all layers")
    return SCRConfig(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=n_layers,
        n_heads=heads, n_kv_heads=hf.get("num_key_value_heads") or heads,
        d_ff=hf["intermediate_size"], window=window, rope_theta=theta,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        scr_layers=tuple(range(n_layers)) if scr_layers is None else scr_layers,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        rope_scaling=scaling, attention_bias=family == "qwen2",
    )
