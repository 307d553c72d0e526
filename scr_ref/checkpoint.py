"""Safetensors checkpoints with the HF-Llama names of SCR_SPEC section 1.

A checkpoint must hold exactly the tensors `config.parameter_shapes()` lists:
a missing, extra or mis-shaped tensor is refused by name. The config travels
in the file's metadata so a checkpoint can be loaded on its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from scredge.config import SCRConfig
from scredge.deps import require
from scredge.destination import atomic_write
from scredge.errors import ScredgeError
from scredge.files import parse_json
from scredge.ref.model import SCRForCausalLM
from scredge.safetensors_file import check_safetensors

CONFIG_METADATA_KEY = "scredge.model_config"
_MATCH_FIX = (
    "check that the checkpoint and the config (scr_layers, n_layers, tie_embeddings) "
    "belong together"
)


def save_checkpoint(model: SCRForCausalLM, path: str | Path) -> Path:
    """Write `model` to `path` atomically (temporary file, then rename)."""
    st = require("safetensors.torch")
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": "pt", CONFIG_METADATA_KEY: json.dumps(model.config.to_dict())}

    def write(tmp) -> None:
        st.save_file(tensors, tmp, metadata=meta)
        _sort_metadata(tmp)

    return atomic_write(path, write)


def _sort_metadata(path) -> None:
    """safetensors writes `__metadata__` from a hash map, in an order that changes from one
    process to the next; rewrite the header with it sorted (same length, same offsets), so
    the same weights always give the same bytes and the sha256 a folder records for its
    reference weights identifies them."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= n:  # always equal: the same keys and values, only reordered
            f.seek(8)
            f.write(text.ljust(n))


def init_checkpoint(config: SCRConfig, out: str | Path, seed: int = 0, gamma: float = 0.1,
                    force: bool = False) -> tuple[Path, Path, int]:
    """A seeded checkpoint at `out` (.safetensors) and its config beside it (.config.json);
    refuses to replace either unless `force`. Returns both paths and the parameter count."""
    from scredge.ref.model import build_model

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ScredgeError("--out must name a .safetensors file", received=str(out),
                           expected="PATH.safetensors")
    config_path = out.with_suffix(".config.json")
    for p in (out, config_path):
        if p.exists() and not force:
            raise ScredgeError("output file exists", received=str(p),
                               fix="pass --force to replace it")
    if not out.parent.is_dir():
        raise ScredgeError("output folder does not exist", received=str(out.parent),
                           fix="create it first")
    model = build_model(config, seed, gamma=gamma)
    save_checkpoint(model, out)
    text = json.dumps({"model": config.to_dict()}, indent=2) + "\n"
    atomic_write(config_path, lambda tmp: Path(tmp).write_text(text))
    return out, config_path, sum(p.numel() for p in model.parameters())


def read_config(path: str | Path) -> SCRConfig | None:
    """The config stored in a checkpoint's metadata, or None if it has none."""
    meta = _open(Path(path)).metadata() or {}
    raw = meta.get(CONFIG_METADATA_KEY)
    if raw is None:
        return None
    data = parse_json(raw, str(path), "the checkpoint's config metadata",
                      "re-save the checkpoint with scredge, or pass --config explicitly")
    return SCRConfig.from_dict(data, source=f"{path} metadata")


def load_state_dict(path: str | Path, config: SCRConfig) -> dict[str, torch.Tensor]:
    """Read every tensor and check names and shapes against `config`, in float32."""
    path = Path(path)
    handle = _open(path)
    expected = config.parameter_shapes()
    found = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    check_tensor_names_and_shapes(found, expected, f"checkpoint {path}")
    out: dict[str, torch.Tensor] = {}
    for name in expected:
        t = handle.get_tensor(name)
        if not t.is_floating_point():
            raise ScredgeError(
                f"checkpoint tensor '{name}' is not floating point",
                received=str(t.dtype),
                expected="float32, float16 or bfloat16",
            )
        out[name] = t.to(torch.float32)
    return out


def check_tensor_names_and_shapes(
    found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], source: str
) -> None:
    """Refuse missing, extra or mis-shaped tensors, naming them."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing:
        raise ScredgeError(
            f"{source} is missing {len(missing)} tensor(s) the config needs",
            received=f"no tensor named {missing[:8]}" + (" ..." if len(missing) > 8 else ""),
            expected=f"all {len(expected)} tensors of SCR_SPEC section 1 for this config",
            fix=_MATCH_FIX,
        )
    if extra:
        raise ScredgeError(
            f"{source} has {len(extra)} tensor(s) the config does not use",
            received=f"unexpected tensor(s) {extra[:8]}" + (" ..." if len(extra) > 8 else ""),
            expected="exactly the tensors of SCR_SPEC section 1 for this config",
            fix=_MATCH_FIX,
        )
    for name, shape in expected.items():
        if tuple(found[name]) != tuple(shape):
            raise ScredgeError(
                f"{source}: tensor '{name}' has the wrong shape",
                received=list(found[name]),
                expected=list(shape),
                fix="check d_model, d_ff, n_heads, n_kv_heads and vocab_size in the config",
            )


def load_checkpoint(path: str | Path, config: SCRConfig | None = None) -> SCRForCausalLM:
    """A float32 reference model from a checkpoint; config from metadata when not given."""
    config = config or read_config(path)
    if config is None:
        raise ScredgeError(
            f"checkpoint {path} carries no scredge config",
            expected=f"metadata key '{CONFIG_METADATA_KEY}' or an explicit config",
            fix="pass the config (--config FILE) alongside the weights",
        )
    model = SCRForCausalLM(config)
    model.load_state_dict(load_state_dict(path, config), strict=True)
    return model.eval()


def _open(path: Path):
    require("safetensors")
    from safetensors import safe_open

    if not path.is_file():
        raise ScredgeError(
            "checkpoint file not found", received=str(path), fix="check the path"
        )
    check_safetensors(path)  # before safetensors allocates what the header claims
    try:
        return safe_open(str(path), framework="pt")
    except Exception as exc:  # safetensors raises its own SafetensorError and OSError
        raise ScredgeError(
            "not a readable safetensors file",
            received=f"{path}: {exc}",
            expected="a .safetensors checkpoint",
            fix="re-save the weights with scredge or safetensors.torch.save_file",
        ) from exc
