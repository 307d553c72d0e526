"""A local Hugging Face Llama-family folder as a reference model: its config mapped by
`scredge.hf_config`, its safetensors weights copied in, SCR layers added at gamma = 0 (an
exact identity, so the model first reproduces the original). Shared by `scredge export
--from-llama` and `scredge train --init`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scredge.config import SCRConfig
from scredge.contract import CONFIG_FILE, HF_SCR_FILE
from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.files import read_json_limited
from scredge.hf_config import llama_config
from scredge.safetensors_file import load_safetensors
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
        data = read_json_limited(path, "config.json")
    except ScredgeError:
        return True  # claims to be one; read_hf_config refuses it by name
    return isinstance(data, dict) and ("model_type" in data or "architectures" in data)


def read_hf_config(folder: Path) -> dict:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise ScredgeError("not a Hugging Face model folder: no config.json",
                           received=str(folder),
                           expected="a folder written by save_pretrained (config.json + "
                                    "*.safetensors)")
    return read_json_limited(path, "config.json of the Hugging Face folder",
                             expected="a JSON object as save_pretrained writes it")


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a Hugging Face folder (the SCR file of export-hf excluded)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = _index_files(index)
    else:
        files = [p.name for p in sorted(folder.glob("*.safetensors")) if p.name != HF_SCR_FILE]
    if not files:
        raise ScredgeError("no safetensors weights in the Hugging Face folder",
                           received=str(folder),
                           fix="save the model with save_pretrained(safe_serialization=True)")
    return [folder / name for name in files]


def read_safetensors(folder: Path) -> dict:
    """Every tensor of the folder's weight files, memory-mapped (scredge.ref.mapped)."""
    from scredge.ref.mapped import MappedSafetensors

    return MappedSafetensors(safetensors_files(folder)).tensors


def _index_files(index: Path) -> list[str]:
    """The shard names of model.safetensors.index.json: plain file names in the folder."""
    data = read_json_limited(index, index.name)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) and v.endswith(".safetensors") and "/" not in v
            and "\\" not in v and v not in (".", "..") for v in weight_map.values()):
        raise ScredgeError(f"{index.name} is malformed", received=repr(weight_map)[:200],
                           expected='{"weight_map": {tensor name: "model-0000x-of-0000y.'
                                    'safetensors", ...}} naming files in the folder')
    return sorted(set(weight_map.values()))


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
    by `scredge export-hf` gets its own trained SCR layers back (HF_SCR_FILE).

    The base weights are not copied: float32 tensors are views of the memory-mapped files
    (scredge.ref.mapped; `model.mapped_weights` hands their pages back), other dtypes are
    converted one tensor at a time. The SCR layers get exactly the values `build_model`
    would give them (the same seeded stream)."""
    from scredge.ref.checkpoint import check_tensor_names_and_shapes
    from scredge.ref.mapped import MappedSafetensors
    from scredge.ref.model import SCRForCausalLM, rotary_inv_freq

    torch = require("torch")
    folder = Path(folder)
    hf, config, tokenizer = hf_config_and_tokenizer(folder, scr_layers)
    mapped = MappedSafetensors(safetensors_files(folder))
    tensors = {k: v for k, v in mapped.tensors.items()
               if not k.endswith("rotary_emb.inv_freq")}
    if config.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # HF may store the tied copy
    expected = {k: s for k, s in config.parameter_shapes().items() if ".scr." not in k}
    check_tensor_names_and_shapes({k: tuple(v.shape) for k, v in tensors.items()}, expected,
                                  f"Hugging Face weights in {folder}")
    scr_tensors = {}
    if (folder / HF_SCR_FILE).is_file():
        scr_tensors = load_safetensors(folder / HF_SCR_FILE)
        check_tensor_names_and_shapes(
            {k: tuple(v.shape) for k, v in scr_tensors.items()},
            {k: s for k, s in config.parameter_shapes().items() if ".scr." in k},
            f"{folder / HF_SCR_FILE}")
    with torch.device("meta"):
        model = SCRForCausalLM(config)
    model.inv_freq = rotary_inv_freq(config)  # a plain attribute, made on meta above
    seeded = {} if scr_tensors else seeded_scr_parameters(model, seed)
    values = seeded | tensors | scr_tensors
    model.load_state_dict({k: v if v.dtype == torch.float32 else v.to(torch.float32)
                           for k, v in values.items()}, strict=True, assign=True)
    model.mapped_weights = mapped
    scr = {"scr_file": HF_SCR_FILE} if scr_tensors else {"scr_seed": seed, "gamma_init": 0.0}
    return HFModel(model.eval(), {"kind": "huggingface", "folder": str(folder),
                                  "architectures": hf.get("architectures"),
                                  "model_type": hf.get("model_type"), **scr}, tokenizer)


def seeded_scr_parameters(model, seed: int, std: float = 0.02) -> dict:
    """The SCR parameters `scr_ref.model.init_weights(model, seed, gamma=0)` gives: the
    seeded stream is drawn in parameter order, the base tensors' draws discarded (one
    tensor at a time), up to the last SCR parameter."""
    torch = require("torch")
    names = [n for n, _ in model.named_parameters()]
    last = max((i for i, n in enumerate(names) if ".scr." in n), default=-1)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i, (name, p) in enumerate(model.named_parameters()):
        if i > last:
            break
        drawn = not (name.endswith("layernorm.weight") or name == "model.norm.weight"
                     or name.endswith("scr.scale") or name.endswith(".bias"))
        value = torch.randn(p.shape, generator=gen) * std if drawn else None
        if ".scr." in name:
            out[name] = value if value is not None else torch.zeros(p.shape)
    return out
