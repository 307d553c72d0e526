"""Where an exported model comes from: a preset, a config + checkpoint, or a local Hugging
Face Llama-family folder retrofitted with SCR layers at gamma = 0 (an exact identity, so the
export first reproduces the original model)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from scredge.config import SCRConfig, parse_scr_layers
from scredge.contract import HF_SCR_FILE
from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.export.hf_config import SUPPORTED_ARCHITECTURES, llama_config
from scredge.export.tokenizer_files import TokenizerFiles, find_tokenizer

__all__ = ["SUPPORTED_ARCHITECTURES", "ModelSource", "from_config", "from_files", "select_source",
           "from_llama", "from_preset", "from_pretrained", "llama_config"]


@dataclass
class ModelSource:
    """A float32 reference model and a description of where it came from."""

    model: object  # scredge.ref.SCRForCausalLM
    description: dict = field(default_factory=dict)
    tokenizer: TokenizerFiles | None = None  # a Hugging Face folder's, copied by the export


def from_config(config: SCRConfig, seed: int, scr_layers: tuple[int, ...] | None,
                description: dict, gamma: float = 0.1) -> ModelSource:
    """Seeded weights for `config` (its SCR layers replaced when `scr_layers` is given)."""
    from scredge.ref import build_model

    if scr_layers is not None:
        config = config.with_(scr_layers=scr_layers)
    return ModelSource(build_model(config, seed, gamma=gamma), description)


def from_preset(name: str, seed: int = 0, scr_layers: tuple[int, ...] | None = None,
                gamma: float = 0.1) -> ModelSource:
    return from_config(SCRConfig.preset(name), seed, scr_layers,
                       {"kind": "preset", "preset": name, "seed": seed, "gamma_init": gamma},
                       gamma)


def from_files(config_path: Path | None, weights: Path) -> ModelSource:
    """A checkpoint, with its config from `config_path` or from the checkpoint's metadata."""
    from scredge.ref import load_checkpoint

    config = SCRConfig.load(config_path) if config_path is not None else None
    model = load_checkpoint(weights, config)
    return ModelSource(model, {"kind": "checkpoint", "weights": str(weights),
                               "config": str(config_path) if config_path else "metadata"})


def from_pretrained(name: str) -> ModelSource:
    """A checkpoint shipped with scredge (trained by `scredge train`), checked against its
    record's sha256 first."""
    from scredge.ref import load_checkpoint, pretrained

    info = pretrained.record(name)
    model = load_checkpoint(pretrained.path(name))
    return ModelSource(model, {"kind": "pretrained", "name": name, "sha256": info["sha256"],
                               "final_val_loss": info["final_val_loss"],
                               "command": info["command"]})


def select_source(*, preset: str = "tiny", pretrained: str | None = None,
                  llama: Path | None = None, config: Path | None = None,
                  weights: Path | None = None, scr_layers: str | None = None,
                  seed: int = 0) -> ModelSource:
    """The model `scredge export` exports, from its source options: one of pretrained,
    llama (a Hugging Face folder), weights (with an optional config), config, preset;
    `scr_layers` is the --scr-layers text."""
    parse_scr_layers(scr_layers, None)  # its syntax, before anything is loaded
    if pretrained is not None:
        if scr_layers is not None or weights is not None or config is not None:
            raise ScredgeError("--pretrained takes no --config, --weights or --scr-layers",
                               received="--pretrained with one of them",
                               fix="drop them: the shipped checkpoint fixes its own config")
        return from_pretrained(pretrained)
    if llama is not None:
        return from_llama(llama, parse_scr_layers(scr_layers, None), seed=seed)
    if weights is not None:
        src = from_files(config, weights)
        layers = parse_scr_layers(scr_layers, src.model.config.n_layers)
        if layers is not None and layers != src.model.config.scr_layers:
            raise ScredgeError("--scr-layers differs from the checkpoint's SCR layers",
                               received=list(layers),
                               expected=list(src.model.config.scr_layers),
                               fix="drop --scr-layers; a checkpoint's SCR layers are fixed")
        return src
    if config is not None:
        cfg = SCRConfig.load(config)
        return from_config(cfg, seed, parse_scr_layers(scr_layers, cfg.n_layers),
                           {"kind": "config", "config": str(config), "seed": seed})
    return from_preset(preset, seed, parse_scr_layers(
        scr_layers, SCRConfig.preset(preset).n_layers))


# ---- Hugging Face Llama family -------------------------------------------------------
def _hf_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ScredgeError("not a Hugging Face model folder: no config.json",
                           received=str(folder),
                           expected="a folder written by save_pretrained (config.json + "
                                    "*.safetensors)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ScredgeError("config.json of the Hugging Face folder is not valid JSON",
                           received=f"{path}: {exc.msg}") from exc


def _read_safetensors(folder: Path) -> dict:
    st = require("safetensors.torch")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [p.name for p in sorted(folder.glob("*.safetensors")) if p.name != HF_SCR_FILE]
    if not files:
        raise ScredgeError("no safetensors weights in the Hugging Face folder",
                           received=str(folder),
                           fix="save the model with save_pretrained(safe_serialization=True)")
    tensors = {}
    for name in files:
        tensors.update(st.load_file(str(folder / name)))
    return tensors


def _scr_file(folder: Path, config: SCRConfig,
              scr_layers: tuple[int, ...] | None) -> tuple[SCRConfig, dict]:
    """A `scredge export-hf` folder's SCR layers (HF_SCR_FILE): the config they belong to
    (its base checked against config.json's) and their tensors; none without the file."""
    from scredge.ref.checkpoint import read_config

    path = folder / HF_SCR_FILE
    if not path.is_file():
        return config, {}
    saved = read_config(path)
    if saved is None or saved.with_(scr_layers=(), kappa=config.kappa) != config.with_(
            scr_layers=()):
        raise ScredgeError(f"{HF_SCR_FILE} does not belong to this config.json",
                           received=str(path), expected="the file export-hf wrote with it",
                           fix=f"remove {HF_SCR_FILE} to retrofit fresh SCR layers")
    if scr_layers is not None and scr_layers != saved.scr_layers:
        raise ScredgeError(f"--scr-layers differs from the SCR layers in {HF_SCR_FILE}",
                           received=list(scr_layers), expected=list(saved.scr_layers),
                           fix="drop --scr-layers; the file fixes them")
    st = require("safetensors.torch")
    return saved, st.load_file(str(path))


def from_llama(folder: Path, scr_layers: tuple[int, ...] | None = None,
               seed: int = 0) -> ModelSource:
    """Retrofit SCR layers (seeded relevance/gate/proj, gamma = 0) onto the weights of a
    local Llama, Mistral or Qwen2 folder; a folder written by `scredge export-hf` gets its
    own SCR layers back (HF_SCR_FILE)."""
    from scredge.ref import build_model
    from scredge.ref.checkpoint import check_tensor_names_and_shapes

    torch = require("torch")
    folder = Path(folder)
    hf = _hf_config(folder)
    config, scr_tensors = _scr_file(folder, llama_config(hf, scr_layers), scr_layers)
    tokenizer = find_tokenizer(folder, hf, config.vocab_size)  # refused before weights load
    tensors = {k: v for k, v in _read_safetensors(folder).items()
               if not k.endswith("rotary_emb.inv_freq")}
    if config.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # HF may store the tied copy
    model = build_model(config, seed, gamma=0.0)
    expected = {k: s for k, s in config.parameter_shapes().items() if ".scr." not in k}
    check_tensor_names_and_shapes({k: tuple(v.shape) for k, v in tensors.items()}, expected,
                                  f"Hugging Face weights in {folder}")
    if scr_tensors:
        check_tensor_names_and_shapes(
            {k: tuple(v.shape) for k, v in scr_tensors.items()},
            {k: s for k, s in config.parameter_shapes().items() if ".scr." in k},
            f"{folder / HF_SCR_FILE}")
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in (tensors | scr_tensors).items():
            params[name].copy_(value.to(torch.float32))
    scr = ({"scr_file": HF_SCR_FILE} if scr_tensors else {"scr_seed": seed, "gamma_init": 0.0})
    return ModelSource(model, {"kind": "huggingface", "folder": str(folder),
                               "architectures": hf.get("architectures"),
                               "model_type": hf.get("model_type"), **scr}, tokenizer)
