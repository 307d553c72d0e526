"""Where an exported model comes from: a preset, a config + checkpoint, or a local Hugging
Face Llama-family folder retrofitted with SCR layers at gamma = 0 (an exact identity, so the
export first reproduces the original model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from scredge.config import SCRConfig, parse_scr_layers
from scredge.errors import ScredgeError
from scredge.hf_config import SUPPORTED_ARCHITECTURES, llama_config
from scredge.tokenizer_files import TokenizerFiles

__all__ = ["SUPPORTED_ARCHITECTURES", "ModelSource", "from_config", "from_files", "select_source",
           "from_gguf", "from_llama", "from_preset", "from_pretrained", "from_run", "llama_config"]


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
    """A checkpoint, with its config from `config_path` or from the checkpoint's metadata;
    a run folder's checkpoint (`scredge train --init` from a Hugging Face folder) brings the
    tokenizer the run kept beside it."""
    from scredge.ref import load_checkpoint
    from scredge.ref.train_init import run_tokenizer

    config = SCRConfig.load(config_path) if config_path is not None else None
    model = load_checkpoint(weights, config)
    return ModelSource(model, {"kind": "checkpoint", "weights": str(weights),
                               "config": str(config_path) if config_path else "metadata"},
                       run_tokenizer(Path(weights).parent, model.config))


def from_run(run: Path) -> ModelSource:
    """A `scredge train` run folder: its model.safetensors and the tokenizer it kept."""
    from scredge.contract import WEIGHTS_FILE

    run = Path(run)
    if not (run / WEIGHTS_FILE).is_file():
        raise ScredgeError("--from-run is not a finished training run",
                           received=f"no {WEIGHTS_FILE} in {run}",
                           expected="a folder `scredge train --out` wrote to the end",
                           fix="finish the run (scredge train --resume --out RUN) first")
    src = from_files(None, run / WEIGHTS_FILE)
    src.description = {"kind": "run", "run": str(run.absolute())}
    return src


def from_pretrained(name: str) -> ModelSource:
    """A checkpoint shipped with scredge (trained by `scredge train`), checked against its
    record's sha256 first."""
    from scredge.ref import load_checkpoint, pretrained

    info = pretrained.record(name)
    model = load_checkpoint(pretrained.path(name))
    return ModelSource(model, {"kind": "pretrained", "name": name, "sha256": info["sha256"],
                               "final_val_loss": info["final_val_loss"],
                               "command": info["command"]})


def _refuse_config_options(flag: str, source: str, **given) -> None:
    """A source that fixes its own config takes no --config, --weights or --scr-layers."""
    extra = [f"--{name.replace('_', '-')}" for name, value in given.items() if value is not None]
    if extra:
        raise ScredgeError(f"{flag} takes no --config, --weights or --scr-layers",
                           received=f"{flag} with {', '.join(extra)}",
                           fix=f"drop {', '.join(extra)}: {source} fixes its own config")


def select_source(*, preset: str = "tiny", pretrained: str | None = None,
                  llama: Path | None = None, run: Path | None = None,
                  gguf: Path | None = None,
                  config: Path | None = None,
                  weights: Path | None = None, scr_layers: str | None = None,
                  seed: int = 0) -> ModelSource:
    """The model `scredge export` exports, from its source options: one of pretrained,
    llama (a Hugging Face folder), gguf (a GGUF file), run (a training run folder), weights
    (with an optional config), config, preset; `scr_layers` is the --scr-layers text."""
    parse_scr_layers(scr_layers, None)  # its syntax, before anything is loaded
    if run is not None:
        _refuse_config_options("--from-run", "the run's checkpoint", config=config,
                               weights=weights, scr_layers=scr_layers)
        return from_run(run)
    if pretrained is not None:
        _refuse_config_options("--pretrained", "the shipped checkpoint", config=config,
                               weights=weights, scr_layers=scr_layers)
        return from_pretrained(pretrained)
    if llama is not None:
        return from_llama(llama, parse_scr_layers(scr_layers, None), seed=seed)
    if gguf is not None:
        return from_gguf(gguf, parse_scr_layers(scr_layers, None), seed=seed)
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
def from_llama(folder: Path, scr_layers: tuple[int, ...] | None = None,
               seed: int = 0) -> ModelSource:
    """Retrofit SCR layers (seeded relevance/gate/proj, gamma = 0) onto the weights of a
    local Llama, Mistral or Qwen2 folder (scredge.ref.hf_import)."""
    from scredge.ref.hf_import import load_llama

    hf = load_llama(Path(folder), scr_layers, seed)
    return ModelSource(hf.model, hf.description, hf.tokenizer)


def from_gguf(path: Path, scr_layers: tuple[int, ...] | None = None,
              seed: int = 0) -> ModelSource:
    """Retrofit SCR layers (gamma = 0) onto a Llama, Mistral or Qwen2 GGUF file's weights,
    dequantized to float32, with the tokenizer and chat template it carries
    (scredge.export.gguf_import)."""
    from scredge.export.gguf_import import load_gguf

    hf = load_gguf(Path(path), scr_layers, seed)
    return ModelSource(hf.model, hf.description, hf.tokenizer)
