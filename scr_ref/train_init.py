"""Where a training run starts (`scredge train --init`): a pretrained model to retrofit SCR
into, which parameters train (`--trainable`), and the tokenizer the data is encoded with.

- `--init DIR` is a Hugging Face Llama-family folder (read as `scredge export --from-llama`
  reads it: `scredge.ref.hf_import`), or a scredge checkpoint (`.safetensors`) or run folder
  (`model.safetensors`, with the tokenizer files a retrofit run keeps). SCR layers named by
  `--scr-layers` and not in the source are added with gamma = 0, so step 0 is the source
  model exactly.
- `--trainable scr` freezes every base weight: only the SCR parameters are handed to the
  optimizer (so only they get gradients and AdamW state) and the base tensors stay bit
  for bit the source's.
- With a tokenizer (the source's `tokenizer.json`, via the `tokenizers` library) the data
  is token ids; without one it stays bytes, which only a byte-level model (vocab 256,
  not a Hugging Face folder) can train on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from scredge.artifact import sha256_file
from scredge.config import SCRConfig
from scredge.contract import TOKENIZER_FILE, TOKENIZER_KEY, WEIGHTS_FILE
from scredge.errors import ScredgeError
from scredge.files import read_json_limited
from scredge.tokenizer_files import TokenizerFiles, find_tokenizer

TRAINABLE = ("all", "scr")
SCR_MARK = ".scr."  # every SCR parameter's name holds it (SCR_SPEC section 1)
RUN_LOG_FILE = "train_log.json"  # a run folder's log (scredge.ref.train.LOG_FILE)
BYTE_VOCAB = 256


@dataclass
class InitSource:
    """The model a run starts from: its config, its weights, its tokenizer."""

    config: SCRConfig  # SCR layers included
    state: dict[str, torch.Tensor] = field(repr=False)  # float32, every parameter
    description: dict  # JSON-able, stored in the log and checked on resume
    tokenizer: TokenizerFiles | None = None
    hf: bool = False  # a Hugging Face folder (never byte-level)

    def base_names(self) -> list[str]:
        return [k for k in self.state if SCR_MARK not in k]


def is_scr_parameter(name: str) -> bool:
    return SCR_MARK in name


def check_trainable(trainable: str, config: SCRConfig, init: InitSource | None) -> None:
    """Refuse a --trainable that is unknown, needs --init, or would train nothing."""
    if trainable not in TRAINABLE:
        raise ScredgeError("invalid --trainable", received=repr(trainable),
                           expected=" or ".join(TRAINABLE))
    if trainable == "scr" and init is None:
        raise ScredgeError("--trainable scr needs --init", received="no --init",
                           expected="--init DIR (a pretrained model whose base weights stay "
                                    "frozen)", fix="add --init, or drop --trainable scr")
    if trainable == "scr" and not config.scr_layers:
        raise ScredgeError("--trainable scr with no SCR layers would train nothing",
                           received="--scr-layers none (or a source without SCR layers)",
                           expected="--scr-layers all or indices like 0,2",
                           fix="name SCR layers, or pass --trainable all")


def trainable_count(config: SCRConfig, trainable: str) -> int:
    import math

    return sum(math.prod(s) for k, s in config.parameter_shapes().items()
               if trainable == "all" or is_scr_parameter(k))


def freeze(model: torch.nn.Module, trainable: str) -> None:
    """requires_grad on the trained parameters only (see make_optimizer)."""
    for name, p in model.named_parameters():
        p.requires_grad_(trainable == "all" or is_scr_parameter(name))


# ---- sources -------------------------------------------------------------------------
def init_for_training(path: Path, scr_layers: str | None, window: str | None,
                      explicit: SCRConfig | None, seed: int) -> InitSource:
    """`scredge train --init PATH`: the source, refused when --window or an explicit
    --preset/--config (`explicit`) describes another model."""
    from scredge.config import parse_window

    init = resolve_init(path, scr_layers, seed)
    if explicit is not None:
        check_against(init, explicit, "--preset/--config")
    if window is not None:
        check_against(init, init.config.with_(window=parse_window(window)), "--window")
    return init


def resolve_init(path: Path, scr_layers: str | None, seed: int) -> InitSource:
    """An --init source, fully checked before anything is written. `scr_layers` (the
    --scr-layers text) None keeps the source's own (every layer for a Hugging Face folder,
    as `export --from-llama`)."""
    from scredge.config import parse_scr_layers
    from scredge.ref.checkpoint import read_config
    from scredge.ref.hf_import import is_hf_folder

    path = Path(path)
    parse_scr_layers(scr_layers, None)  # its syntax first
    if path.is_dir() and is_hf_folder(path):
        return _from_hf(path, parse_scr_layers(scr_layers, None), seed)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    if weights.is_file() and weights.suffix == ".safetensors":
        config = read_config(weights)
        n_layers = config.n_layers if config is not None else None
        return _from_checkpoint(weights, parse_scr_layers(scr_layers, n_layers), seed)
    raise ScredgeError("--init is neither a Hugging Face folder nor a scredge checkpoint",
                       received=str(path),
                       expected="a folder written by save_pretrained (config.json naming a "
                                "Llama/Mistral/Qwen2 model + *.safetensors), a scredge run "
                                f"folder (holding {WEIGHTS_FILE}) or a .safetensors checkpoint",
                       fix="point --init at one of those")


def _from_hf(folder: Path, scr_layers, seed: int) -> InitSource:
    from scredge.ref.hf_import import load_llama

    hf = load_llama(folder, scr_layers, seed)
    state = {k: v.detach().clone() for k, v in hf.model.state_dict().items()}
    desc = dict(hf.description, folder=str(folder.absolute()), weights_sha256=sha256_file(
        *sorted(folder.glob("*.safetensors"))))
    return InitSource(hf.model.config, state, desc, hf.tokenizer, hf=True)


def _from_checkpoint(weights: Path, scr_layers, seed: int) -> InitSource:
    from scredge.ref.checkpoint import load_checkpoint
    from scredge.ref.model import build_model

    source = load_checkpoint(weights)
    config = source.config
    if scr_layers is not None and set(scr_layers) != set(config.scr_layers):
        dropped = sorted(set(config.scr_layers) - set(scr_layers))
        if dropped:
            raise ScredgeError("--scr-layers would drop SCR layers the checkpoint trained",
                               received=f"--scr-layers {list(scr_layers)}",
                               expected=f"a superset of the checkpoint's {list(config.scr_layers)}",
                               fix="name every layer the checkpoint has SCR in, plus new ones")
        config = config.with_(scr_layers=tuple(sorted(scr_layers)))
    model = build_model(config, seed, gamma=0.0)  # new SCR layers: seeded, identity
    model.load_state_dict(source.state_dict(), strict=False)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    desc = {"kind": "checkpoint", "weights": str(weights.absolute()),
            "weights_sha256": sha256_file(weights), "scr_seed": seed, "gamma_init": 0.0,
            "source_scr_layers": list(source.config.scr_layers)}
    return InitSource(config, state, desc, run_tokenizer(weights.parent, config))


def run_tokenizer(folder: Path, config: SCRConfig) -> TokenizerFiles | None:
    """The tokenizer a retrofit run kept (its log names it), or None (byte-level); also for
    `scredge export --from-run` / `--weights RUN/model.safetensors`."""
    folder = Path(folder)
    log_path = folder / RUN_LOG_FILE
    if not (folder / TOKENIZER_FILE).is_file() or not log_path.is_file():
        return None
    log = read_json_limited(log_path, f"the run's {RUN_LOG_FILE}")
    saved = log.get(TOKENIZER_KEY) if isinstance(log, dict) else None
    if not saved:
        return None
    if not isinstance(saved, dict):
        raise ScredgeError(f"the run's {RUN_LOG_FILE} has a malformed '{TOKENIZER_KEY}'",
                           received=repr(saved)[:120], expected="an object")
    return find_tokenizer(folder, {"eos_token_id": saved.get("eos_token_ids") or None},
                          config.vocab_size)


def check_against(init: InitSource, config: SCRConfig, what: str) -> None:
    """--preset/--config/--window given with --init must describe the same model."""
    if config == init.config:
        return
    a, b = config.to_dict(), init.config.to_dict()
    diff = [k for k in a if a[k] != b[k] and k != "scr_layers"]
    if not diff:
        return
    raise ScredgeError(f"{what} disagrees with the --init model",
                       received=", ".join(f"{k}={a[k]}" for k in diff),
                       expected="the --init model's " + ", ".join(f"{k}={b[k]}" for k in diff),
                       fix=f"drop {what}: --init fixes the model")


# ---- data --------------------------------------------------------------------------------
def encode(text: bytes, tokenizer: TokenizerFiles | None, init: InitSource | None,
           vocab_size: int) -> np.ndarray | bytes:
    """The training data in the model's units: the tokenizer's ids (no special tokens
    added), or the bytes themselves for a byte-level model."""
    if tokenizer is None:
        # a pretrained model without a tokenizer is byte-level only with exactly 256 ids
        # (another vocabulary is a tokenizer's); a new model's config may pick any >= 256
        if init is not None and (init.hf or vocab_size != BYTE_VOCAB):
            raise ScredgeError("the --init model has no tokenizer to encode text with",
                               received=f"no {TOKENIZER_FILE} with " + str(
                                   init.description.get("folder")
                                   or init.description.get("weights")),
                               expected=f"a folder with {TOKENIZER_FILE} (the tokenizer the "
                                        "model was trained with)",
                               fix="save the tokenizer into the folder (save_pretrained)")
        return text
    return tokenizer.encode_text(text)
