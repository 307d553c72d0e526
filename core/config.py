"""The model config of SCR_SPEC section 1: a typed, validated, JSON-able dataclass.

Torch-free on purpose: the reference model, the exporter, the builder and the
torch-free runtime all read the same `config.json`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from scredge.errors import ScredgeError
from scredge.files import read_json_limited
from scredge.limits import (
    MAX_CONTEXT,
    MAX_MODEL_DIM,
    MAX_MODEL_HEADS,
    MAX_MODEL_LAYERS,
    MAX_PARAMETERS,
)

# v2 model fields (SCR_SPEC section 1): absent from a config file = the v1 behaviour, and left
# out of `to_dict` when they hold that behaviour, so a v1 model's config.json is unchanged.
V2_FIELDS = ("rope_scaling", "attention_bias")
# rope_type -> the keys its `rope_scaling` object carries besides rope_type
ROPE_SCALING_KEYS: dict[str, tuple[str, ...]] = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor",
               "original_max_position_embeddings"),
}


@dataclass(frozen=True)
class RopeScaling:
    """SCR_SPEC v2 `rope_scaling`: linear (`inv_freq /= factor`) or HF's llama3 rule."""

    rope_type: str
    factor: float
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None

    def __post_init__(self) -> None:
        _validate_rope_scaling(self)

    @classmethod
    def from_dict(cls, data: object) -> RopeScaling:
        """The spec's JSON object, every key of its rope_type and no other."""
        if not isinstance(data, dict) or data.get("rope_type") not in ROPE_SCALING_KEYS:
            raise ScredgeError(
                "invalid config field 'rope_scaling'", received=repr(data),
                expected="null, or an object with rope_type "
                         + " or ".join(repr(t) for t in ROPE_SCALING_KEYS))
        wanted = set(ROPE_SCALING_KEYS[data["rope_type"]])
        got = set(data) - {"rope_type"}
        if got != wanted:
            raise ScredgeError(
                f"invalid config field 'rope_scaling' ({data['rope_type']})",
                received=sorted(got), expected=f"exactly the keys {sorted(wanted)}",
                fix=f"unknown: {sorted(got - wanted)}; missing: {sorted(wanted - got)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return {"rope_type": self.rope_type,
                **{k: getattr(self, k) for k in ROPE_SCALING_KEYS[self.rope_type]}}


@dataclass(frozen=True)
class SCRConfig:
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    d_ff: int = 384
    window: int | None = 128  # tokens a query may see, itself included; None = full causal
    rope_theta: float = 1e4
    norm_eps: float = 1e-5
    scr_layers: tuple[int, ...] = field(default=(0, 1, 2, 3))  # () = plain transformer
    kappa: float = 8.0
    tie_embeddings: bool = True
    rope_scaling: RopeScaling | None = None  # v2; None = plain rotary
    attention_bias: bool = False  # v2; q, k, v projections carry biases (Qwen2)

    def __post_init__(self) -> None:
        # JSON gives lists; keep an immutable, hashable tuple.
        if isinstance(self.scr_layers, list):
            object.__setattr__(self, "scr_layers", tuple(self.scr_layers))
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", RopeScaling.from_dict(self.rope_scaling))
        _validate(self)

    # ---- derived fields ------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_groups(self) -> int:
        """Query heads served by each key/value head."""
        return self.n_heads // self.n_kv_heads

    @property
    def max_cache(self) -> int | None:
        """Most cached positions a call may receive or return (W-1), None if unbounded."""
        return None if self.window is None else self.window - 1

    def present_len(self, past: int, new: int) -> int:
        """P' of SCR_SPEC section 3: cache length returned by a call with P past, T new tokens."""
        total = past + new
        return total if self.window is None else min(total, self.window - 1)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of a checkpoint, in HF-Llama names (SCR_SPEC section 1)."""
        d, f, v = self.d_model, self.d_ff, self.vocab_size
        kv = self.n_kv_heads * self.head_dim
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, d)}
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            shapes[p + "input_layernorm.weight"] = (d,)
            shapes[p + "self_attn.q_proj.weight"] = (d, d)
            shapes[p + "self_attn.k_proj.weight"] = (kv, d)
            shapes[p + "self_attn.v_proj.weight"] = (kv, d)
            shapes[p + "self_attn.o_proj.weight"] = (d, d)
            if self.attention_bias:
                shapes[p + "self_attn.q_proj.bias"] = (d,)
                shapes[p + "self_attn.k_proj.bias"] = (kv,)
                shapes[p + "self_attn.v_proj.bias"] = (kv,)
            shapes[p + "post_attention_layernorm.weight"] = (d,)
            shapes[p + "mlp.gate_proj.weight"] = (f, d)
            shapes[p + "mlp.up_proj.weight"] = (f, d)
            shapes[p + "mlp.down_proj.weight"] = (d, f)
            if i in self.scr_layers:
                shapes[p + "scr.relevance.weight"] = (d,)
                shapes[p + "scr.relevance.bias"] = (1,)
                shapes[p + "scr.gate.weight"] = (d,)
                shapes[p + "scr.gate.bias"] = (1,)
                shapes[p + "scr.proj.weight"] = (d, d)
                shapes[p + "scr.proj.bias"] = (d,)
                shapes[p + "scr.scale"] = (d,)
        shapes["model.norm.weight"] = (d,)
        if not self.tie_embeddings:
            shapes["lm_head.weight"] = (v, d)
        return shapes

    # ---- construction --------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> SCRConfig:
        if name not in PRESETS:
            raise ScredgeError(
                "unknown preset",
                received=repr(name),
                expected=f"one of {sorted(PRESETS)}",
                fix="pass --preset tiny or --preset small, or a config file with --config",
            )
        return PRESETS[name]

    def with_(self, **changes: object) -> SCRConfig:
        """A validated copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scr_layers"] = list(self.scr_layers)
        if self.rope_scaling is None:
            del d["rope_scaling"]
        else:
            d["rope_scaling"] = self.rope_scaling.to_dict()
        if not self.attention_bias:
            del d["attention_bias"]
        return d

    @classmethod
    def from_dict(cls, data: object, *, source: str = "config") -> SCRConfig:
        if not isinstance(data, dict):
            raise ScredgeError(
                f"{source} must be a JSON object of model fields",
                received=type(data).__name__,
                expected=f"an object with keys {[f.name for f in fields(cls)]}",
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ScredgeError(
                f"{source} has unknown model fields",
                received=unknown,
                expected=f"only {sorted(known)}",
                fix="remove or rename those keys",
            )
        missing = sorted(known - set(data) - set(V2_FIELDS))
        if missing:
            raise ScredgeError(
                f"{source} lacks model fields",
                received=sorted(data),
                expected=f"also {missing}",
                fix="write every field of SCR_SPEC section 1 (see `scredge init --preset tiny`)",
            )
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def load(cls, path: str | Path) -> SCRConfig:
        """Read a config file: either bare model fields or an artifact's `{"model": {...}}`."""
        path = Path(path)
        data = read_json_limited(path, "config file", expected="a JSON object of model fields")
        if isinstance(data, dict) and "model" in data and isinstance(data["model"], dict):
            data = data["model"]
        return cls.from_dict(data, source=str(path))


def _validate(c: SCRConfig) -> None:
    def bad(name: str, value: object, expected: str, fix: str | None = None) -> None:
        raise ScredgeError(
            f"invalid config field '{name}'", received=repr(value), expected=expected, fix=fix
        )

    for name, most in (("vocab_size", MAX_MODEL_DIM), ("d_model", MAX_MODEL_DIM),
                       ("n_layers", MAX_MODEL_LAYERS), ("n_heads", MAX_MODEL_HEADS),
                       ("n_kv_heads", MAX_MODEL_HEADS), ("d_ff", MAX_MODEL_DIM)):
        v = getattr(c, name)
        if not _is_int(v) or not 1 <= v <= most:
            bad(name, v, f"a positive integer (at most {most})")
    if c.window is not None and (not _is_int(c.window) or not 1 <= c.window <= MAX_CONTEXT):
        bad("window", c.window, f"an integer >= 1 (at most {MAX_CONTEXT}), or null for full "
                                "causal attention")
    for name in ("rope_theta", "norm_eps", "kappa"):
        v = getattr(c, name)
        if not _is_real(v) or not math.isfinite(v) or v <= 0:
            bad(name, v, "a finite number > 0")
    for name in ("tie_embeddings", "attention_bias"):
        if not isinstance(getattr(c, name), bool):
            bad(name, getattr(c, name), "true or false")
    if c.rope_scaling is not None and not isinstance(c.rope_scaling, RopeScaling):
        bad("rope_scaling", c.rope_scaling, "null or a rope_scaling object (SCR_SPEC section 1)")
    if c.d_model % c.n_heads:
        bad("n_heads", c.n_heads, f"a divisor of d_model={c.d_model}")
    if c.n_heads % c.n_kv_heads:
        bad("n_kv_heads", c.n_kv_heads, f"a divisor of n_heads={c.n_heads}")
    if c.head_dim % 2:
        bad(
            "n_heads",
            c.n_heads,
            f"a value making head_dim = d_model/n_heads even (rotary); now {c.head_dim}",
        )
    if not isinstance(c.scr_layers, tuple) or not all(_is_int(i) for i in c.scr_layers):
        bad("scr_layers", c.scr_layers, "a list of layer indices")
    if any(not 0 <= i < c.n_layers for i in c.scr_layers):
        bad("scr_layers", list(c.scr_layers), f"indices in 0..{c.n_layers - 1}")
    if list(c.scr_layers) != sorted(set(c.scr_layers)):
        bad("scr_layers", list(c.scr_layers), "strictly increasing indices, no repeats")
    n = sum(math.prod(s) for s in c.parameter_shapes().values())
    if n > MAX_PARAMETERS:
        bad("d_model", c.d_model, f"a model of at most {MAX_PARAMETERS} parameters "
                                  f"(this one has {n})")


def _validate_rope_scaling(r: RopeScaling) -> None:
    def bad(key: str, value: object, expected: str) -> None:
        raise ScredgeError(f"invalid config field 'rope_scaling.{key}'", received=repr(value),
                           expected=expected)

    if r.rope_type not in ROPE_SCALING_KEYS:
        bad("rope_type", r.rope_type, f"one of {list(ROPE_SCALING_KEYS)}")
    for key in ("factor", "low_freq_factor", "high_freq_factor"):
        v = getattr(r, key)
        if key not in ROPE_SCALING_KEYS[r.rope_type]:
            if v is not None:
                bad(key, v, f"absent for rope_type {r.rope_type!r}")
        elif not _is_real(v) or not math.isfinite(v) or v <= 0:
            bad(key, v, "a finite number > 0")
    omp = r.original_max_position_embeddings
    if r.rope_type == "llama3":
        if not _is_int(omp) or omp < 1:
            bad("original_max_position_embeddings", omp, "a positive integer")
        if r.high_freq_factor <= r.low_freq_factor:
            bad("high_freq_factor", r.high_freq_factor,
                f"greater than low_freq_factor = {r.low_freq_factor}")
    elif omp is not None:
        bad("original_max_position_embeddings", omp, f"absent for rope_type {r.rope_type!r}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


PRESETS: dict[str, SCRConfig] = {
    "tiny": SCRConfig(),
    "small": SCRConfig(
        d_model=512, n_layers=8, n_heads=8, n_kv_heads=4, d_ff=1536, window=512,
        scr_layers=tuple(range(8)),
    ),
}


def parse_scr_layers(text: str | None, n_layers: int | None) -> tuple[int, ...] | None:
    """--scr-layers for a model of n_layers: absent -> None (keep the source's own), 'all'
    -> every layer, 'none' -> (), '0,2' -> (0, 2). n_layers None (not known yet: a Llama
    folder) turns 'all' into None, the source's own default of every layer."""
    if text is None:
        return None
    if text == "all":
        return None if n_layers is None else tuple(range(n_layers))
    if text == "none":
        return ()
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise ScredgeError("invalid --scr-layers", received=repr(text),
                           expected="'all', 'none' or comma-separated layer indices like 0,2,3"
                           ) from None


def parse_window(text: str) -> int | None:
    """--window: a token count, or 'none' for full causal attention."""
    if text == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise ScredgeError("invalid --window", received=repr(text),
                           expected="a positive integer, or 'none' for full causal attention"
                           ) from None
