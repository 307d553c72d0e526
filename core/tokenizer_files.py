"""The tokenizer files of a Hugging Face folder, checked and carried into the artifact
(SCR_SPEC sections 1 and 4).

A folder with `tokenizer.json` gives the artifact its tokenizer: that file and whichever of
tokenizer_config.json, chat_template.jinja, special_tokens_map.json and
generation_config.json exist are copied (and so listed in the manifest). The eos ids the
runtime stops on are resolved here once, as transformers' `generate` resolves them, and
written into config.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scredge.contract import (
    CHAT_TEMPLATE_FILE,
    GENERATION_CONFIG_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    TOKENIZER_FILES,
)
from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.files import read_bytes_limited, read_json_limited, read_text_limited
from scredge.limits import MAX_TOKENIZER_BYTES

# transformers' named special tokens: the template variables it passes to chat templates
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                       "cls_token", "mask_token")


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
        tok = load_tokenizer_json(self.folder / TOKENIZER_FILE)
        ids = tok.encode(text.decode("utf-8", errors="replace"), add_special_tokens=False).ids
        return np.asarray(ids, dtype=np.int64)

    def copy_into(self, dest: Path) -> None:
        """Copy the files as bytes read through the size limit (a source file that grew
        past it, or turned into a FIFO, since it was checked is refused, not copied)."""
        for name in self.files:
            data = read_bytes_limited(self.folder / name, name, MAX_TOKENIZER_BYTES)
            (Path(dest) / name).write_bytes(data)


def read_json(path: Path) -> dict:
    """A tokenizer or model JSON file of a Hugging Face folder, through the size limit;
    tokenizer_config.json and special_tokens_map.json also field-checked."""
    path = Path(path)
    data = read_json_limited(path, path.name, expected="a JSON object as transformers "
                                                       "writes it")
    if not isinstance(data, dict):
        raise ScredgeError(f"{path.name} is not a JSON object", received=type(data).__name__)
    if path.name in (TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE):
        check_tokenizer_config(data, str(path))
    return data


def check_tokenizer_config(data: dict, source: str) -> dict:
    """The fields of tokenizer_config.json / special_tokens_map.json scredge reads, each of
    the type transformers writes, checked in this one place (export and runtime alike):
    named special tokens are strings or AddedToken objects with a string `content`;
    `chat_template` a string or a list of {"name": str, "template": str};
    `clean_up_tokenization_spaces` a bool."""
    def bad(key: str, value: object, expected: str) -> None:
        raise ScredgeError(f"{source}: field '{key}' has the wrong type",
                           received=repr(value)[:120], expected=expected,
                           fix="save the tokenizer again with transformers' save_pretrained")

    for name in SPECIAL_TOKEN_NAMES:
        token = data.get(name)
        if token is not None and not isinstance(token, str) and not (
                isinstance(token, dict) and isinstance(token.get("content"), str)):
            bad(name, token, 'a string, or {"content": a string, ...}')
    template = data.get("chat_template")
    if template is not None and not isinstance(template, str) and not (
            isinstance(template, list) and all(
                isinstance(t, dict) and isinstance(t.get("name"), str)
                and isinstance(t.get("template"), str) for t in template)):
        bad("chat_template", template, 'a string, or a list of {"name": str, "template": str}')
    for key in ("clean_up_tokenization_spaces",
                "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"):
        if data.get(key) is not None and not isinstance(data[key], bool):
            bad(key, data[key], "true or false")
    return data


def load_tokenizer_json(path: Path, text: str | None = None):
    """A `tokenizers.Tokenizer` from tokenizer.json read through MAX_TOKENIZER_BYTES (or
    from `text` already read); a file the library refuses is a ScredgeError."""
    tokenizers = require("tokenizers")
    if text is None:
        text = read_text_limited(path, TOKENIZER_FILE, MAX_TOKENIZER_BYTES)
    try:
        return tokenizers.Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises a bare Exception on a bad file
        raise ScredgeError("tokenizer.json cannot be read by the tokenizers library",
                           received=f"{path}: {exc}"[:300],
                           expected="a Hugging Face tokenizers file",
                           fix="save the tokenizer with save_pretrained, or remove the file "
                               "to export without a tokenizer") from exc


def find_tokenizer(folder: Path, hf_config: dict, model_vocab: int) -> TokenizerFiles | None:
    """The folder's tokenizer files, checked against the model, or None without tokenizer.json
    (the artifact then keeps the byte tokenizer's default, or ids only)."""
    folder = Path(folder)
    if not (folder / TOKENIZER_FILE).is_file():
        return None
    tok = load_tokenizer_json(folder / TOKENIZER_FILE)
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
        if name == CHAT_TEMPLATE_FILE:
            read_text_limited(folder / name, name)
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
