"""The tokenizer files of a Hugging Face folder, checked and carried into the artifact
(SCR_SPEC sections 1 and 4).

A folder with `tokenizer.json` gives the artifact its tokenizer: that file and whichever of
tokenizer_config.json, chat_template.jinja, special_tokens_map.json and
generation_config.json exist are copied (and so listed in the manifest). The eos ids the
runtime stops on are resolved here once, as transformers' `generate` resolves them, and
written into config.json.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scredge.contract import (
    GENERATION_CONFIG_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    TOKENIZER_FILES,
)
from scredge.deps import require
from scredge.errors import ScredgeError


@dataclass(frozen=True)
class TokenizerFiles:
    folder: Path
    files: tuple[str, ...]  # names in TOKENIZER_FILES present in `folder`
    eos_token_ids: tuple[int, ...]
    vocab_size: int  # the tokenizer's, added tokens included (<= the model's)

    def describe(self) -> dict:
        """The config.json section (artifact.TOKENIZER_KEY)."""
        return {"files": list(self.files), "eos_token_ids": list(self.eos_token_ids),
                "vocab_size": self.vocab_size, "source": str(self.folder)}

    def encode_text(self, text: bytes) -> np.ndarray:
        """UTF-8 text -> the tokenizer's ids [n] int64, no special tokens added (training
        data, a calibration text, the held-out text)."""
        tokenizers = require("tokenizers")
        tok = tokenizers.Tokenizer.from_file(str(self.folder / TOKENIZER_FILE))
        ids = tok.encode(text.decode("utf-8", errors="replace"), add_special_tokens=False).ids
        return np.asarray(ids, dtype=np.int64)

    def copy_into(self, dest: Path) -> None:
        for name in self.files:
            shutil.copyfile(self.folder / name, dest / name)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScredgeError(f"cannot read {path.name}", received=f"{path}: {exc}",
                           expected="a JSON object as transformers writes it") from exc
    if not isinstance(data, dict):
        raise ScredgeError(f"{path.name} is not a JSON object", received=type(data).__name__)
    return data


def find_tokenizer(folder: Path, hf_config: dict, model_vocab: int) -> TokenizerFiles | None:
    """The folder's tokenizer files, checked against the model, or None without tokenizer.json
    (the artifact then keeps the byte tokenizer's default, or ids only)."""
    folder = Path(folder)
    if not (folder / TOKENIZER_FILE).is_file():
        return None
    tokenizers = require("tokenizers")
    try:
        tok = tokenizers.Tokenizer.from_file(str(folder / TOKENIZER_FILE))
    except Exception as exc:  # tokenizers raises a bare Exception on a bad file
        raise ScredgeError("tokenizer.json cannot be read by the tokenizers library",
                           received=f"{folder / TOKENIZER_FILE}: {exc}",
                           expected="a Hugging Face tokenizers file",
                           fix="save the tokenizer with save_pretrained, or remove the file "
                               "to export without a tokenizer") from exc
    n = tok.get_vocab_size(with_added_tokens=True)
    if n > model_vocab:
        raise ScredgeError("the tokenizer has more tokens than the model's vocabulary",
                           received=f"{n} tokens in tokenizer.json",
                           expected=f"at most vocab_size = {model_vocab}",
                           fix="use the tokenizer the model was trained with")
    files = tuple(name for name in TOKENIZER_FILES if (folder / name).is_file())
    for name in files:
        if name.endswith(".json") and name != TOKENIZER_FILE:
            read_json(folder / name)  # refuse a malformed file now, not at run time
    eos = eos_token_ids(folder, hf_config, tok)
    bad = [i for i in eos if not 0 <= i < model_vocab]
    if bad:
        raise ScredgeError("eos token ids outside the model's vocabulary", received=bad,
                           expected=f"ids in 0..{model_vocab - 1}")
    return TokenizerFiles(folder, files, eos, n)


def eos_token_ids(folder: Path, hf_config: dict, tok) -> tuple[int, ...]:
    """transformers' generate stops on generation_config.json's eos_token_id, or, without that
    file, on config.json's; lacking both, the tokenizer's eos_token is the best guess."""
    gen_path = folder / GENERATION_CONFIG_FILE
    if gen_path.is_file():
        value = read_json(gen_path).get("eos_token_id")
    else:
        value = hf_config.get("eos_token_id")
    if value is None and (folder / TOKENIZER_CONFIG_FILE).is_file():
        token = read_json(folder / TOKENIZER_CONFIG_FILE).get("eos_token")
        token = token.get("content") if isinstance(token, dict) else token
        value = tok.token_to_id(token) if isinstance(token, str) else None
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ScredgeError("eos_token_id must be an integer or a list of integers",
                           received=repr(value), expected="e.g. 2 or [128001, 128009]")
    return tuple(dict.fromkeys(values))
