"""A local Hugging Face Llama-family folder as a reference model: its config mapped by
`scredge.hf_config`, its safetensors weights copied in, SCR layers added at gamma = 0 (an
exact identity, so the model first reproduces the original). Shared by `scredge export
--from-llama` and `scredge train --init`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from scredge.config import SCRConfig
from scredge.contract import CONFIG_FILE, HF_SCR_FILE
from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.hf_config import llama_config
from scredge.tokenizer_files import TokenizerFiles, find_tokenizer


@dataclass
class HFModel:
    model: object  # scredge.ref.SCRForCausalLM, float32, SCR gamma = 0
    description: dict
    tokenizer: TokenizerFiles | None


def is_hf_folder(folder: Path) -> bool:
    """A folder save_pretrained wrote: config.json naming a model_type or architectures."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True  # claims to be one; read_hf_config refuses it by name
    return isinstance(data, dict) and ("model_type" in data or "architectures" in data)


def read_hf_config(folder: Path) -> dict:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise ScredgeError("not a Hugging Face model folder: no config.json",
                           received=str(folder),
                           expected="a folder written by save_pretrained (config.json + "
                                    "*.safetensors)")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScredgeError("config.json of the Hugging Face folder is not valid JSON",
                           received=f"{path}: {exc}") from exc


def read_safetensors(folder: Path) -> dict:
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
        try:
            tensors.update(st.load_file(str(folder / name)))
        except Exception as exc:  # SafetensorError (truncated, corrupt header), OSError
            raise ScredgeError("a safetensors file of the Hugging Face folder cannot be read "
                               "(truncated or corrupt?)",
                               received=f"{folder / name}: {type(exc).__name__}: {exc}"[:300],
                               expected="a whole safetensors file, as save_pretrained writes",
                               fix="download or save the model again") from exc
    return tensors


def hf_config_and_tokenizer(folder: Path, scr_layers: tuple[int, ...] | None
                            ) -> tuple[dict, SCRConfig, TokenizerFiles | None]:
    """The folder's config.json, its SCRConfig and tokenizer files, all checked, before any
    weight is read."""
    hf = read_hf_config(folder)
    config = scr_file_config(folder, llama_config(hf, scr_layers), scr_layers)
    return hf, config, find_tokenizer(folder, hf, config.vocab_size)


def scr_file_config(folder: Path, config: SCRConfig,
                    scr_layers: tuple[int, ...] | None) -> SCRConfig:
    """The config of a `scredge export-hf` folder's SCR layers (HF_SCR_FILE), its base
    checked against config.json's; `config` itself without the file."""
    from scredge.ref.checkpoint import read_config

    path = Path(folder) / HF_SCR_FILE
    if not path.is_file():
        return config
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
    return saved


def load_llama(folder: Path, scr_layers: tuple[int, ...] | None = None,
               seed: int = 0) -> HFModel:
    """Retrofit SCR layers (seeded relevance/gate/proj, gamma = 0) onto the weights of a
    local Llama, Mistral or Qwen2 folder; `scr_layers` None = every layer. A folder written
    by `scredge export-hf` gets its own trained SCR layers back (HF_SCR_FILE)."""
    from scredge.ref.checkpoint import check_tensor_names_and_shapes
    from scredge.ref.model import build_model

    torch = require("torch")
    folder = Path(folder)
    hf, config, tokenizer = hf_config_and_tokenizer(folder, scr_layers)
    tensors = {k: v for k, v in read_safetensors(folder).items()
               if not k.endswith("rotary_emb.inv_freq")}
    if config.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # HF may store the tied copy
    model = build_model(config, seed, gamma=0.0)
    expected = {k: s for k, s in config.parameter_shapes().items() if ".scr." not in k}
    check_tensor_names_and_shapes({k: tuple(v.shape) for k, v in tensors.items()}, expected,
                                  f"Hugging Face weights in {folder}")
    scr_tensors = {}
    if (folder / HF_SCR_FILE).is_file():
        scr_tensors = require("safetensors.torch").load_file(str(folder / HF_SCR_FILE))
        check_tensor_names_and_shapes(
            {k: tuple(v.shape) for k, v in scr_tensors.items()},
            {k: s for k, s in config.parameter_shapes().items() if ".scr." in k},
            f"{folder / HF_SCR_FILE}")
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in (tensors | scr_tensors).items():
            params[name].copy_(value.to(torch.float32))
    scr = {"scr_file": HF_SCR_FILE} if scr_tensors else {"scr_seed": seed, "gamma_init": 0.0}
    return HFModel(model, {"kind": "huggingface", "folder": str(folder),
                           "architectures": hf.get("architectures"),
                           "model_type": hf.get("model_type"), **scr}, tokenizer)
