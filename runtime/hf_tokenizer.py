"""A Hugging Face tokenizer from an artifact's files, with the `tokenizers` library alone.

Encoding, decoding and the chat template follow transformers' fast tokenizer exactly
(checked against it in tests/runtime/test_hf_tokenizer.py): `encode` is
`tokenizer(text).input_ids`, `decode` is `tokenizer.decode(ids)` (special tokens kept, and
the clean-up of tokenization spaces that transformers applies only to non-BPE models when
tokenizer_config.json asks for it).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from scredge.artifact import listed_member, read_member_json, read_member_text
from scredge.contract import (
    CHAT_TEMPLATE_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    TOKENIZER_KEY,
)
from scredge.deps import require
from scredge.errors import ScredgeError

# transformers' named special tokens: the template variables it passes to chat templates
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                       "cls_token", "mask_token")
MAX_TOKENIZER_BYTES = 256 << 20  # the largest hub tokenizer.json files are tens of MiB
REPLACEMENT = "\ufffd"  # what an incomplete UTF-8 sequence decodes to


class HFTokenizer:
    def __init__(self, tokenizer, config: dict, chat_template: str | None,
                 eos_ids: tuple[int, ...], special_tokens: dict[str, str]) -> None:
        self._tok = tokenizer  # tokenizers.Tokenizer
        self.config = config  # tokenizer_config.json
        self.chat_template = chat_template
        self.eos_ids = eos_ids
        self.special_tokens = special_tokens  # e.g. {"eos_token": "<|im_end|>"}
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        # transformers skips the clean-up for BPE models unless told it corrupts nothing
        self._clean_up = bool(config.get("clean_up_tokenization_spaces", False)) and (
            type(tokenizer.model).__name__ != "BPE" or bool(config.get(
                "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output")))

    @classmethod
    def load(cls, folder: Path, manifest: dict, settings: dict) -> HFTokenizer:
        """From the artifact's tokenizer files, each read only when `manifest` lists it
        (inside the folder, hash-checked on open); tokenizer.json must be listed."""
        tokenizers = require("tokenizers")
        folder = Path(folder)
        path = listed_member(folder, manifest, TOKENIZER_FILE, "tokenizer")
        if path is None:
            raise ScredgeError("the artifact has no tokenizer", received=f"no {TOKENIZER_FILE}"
                               f" in {folder}", fix="re-export the folder")
        text = read_member_text(path, TOKENIZER_FILE, MAX_TOKENIZER_BYTES)
        try:
            tok = tokenizers.Tokenizer.from_str(text)
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise ScredgeError(f"the artifact's {TOKENIZER_FILE} cannot be read",
                               received=f"{path}: {exc}"[:300],
                               fix="re-export the folder") from exc
        config = _read(folder, manifest, TOKENIZER_CONFIG_FILE)
        special = {**_read(folder, manifest, SPECIAL_TOKENS_MAP_FILE), **config}
        special_tokens = {name: _token_text(special[name]) for name in SPECIAL_TOKEN_NAMES
                          if special.get(name) is not None}
        eos = tuple(settings.get(TOKENIZER_KEY, {}).get("eos_token_ids", ()))
        return cls(tok, config, _chat_template(folder, manifest, config), eos, special_tokens)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """add_special_tokens: the tokenizer's post-processor (e.g. a leading bos), as
        transformers' tokenizer(text); a rendered chat template brings its own (False)."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int]) -> str:
        text = self._tok.decode(list(ids), skip_special_tokens=False)
        return clean_up_tokenization(text) if self._clean_up else text

    def stream_decoder(self) -> HFStreamDecoder:
        return HFStreamDecoder(self)


class HFStreamDecoder:
    """Incremental detokenization: each id's text once it is final.

    Decoding ids[prefix:] against ids[prefix:read] gives the new text with the context a
    decoder needs (a SentencePiece-style decoder drops the leading space of a sequence's
    first piece); text ending in U+FFFD is an incomplete character and waits. When the
    tokenizer cleans up tokenization spaces, the pieces go through the same clean-up
    (`StreamCleanUp`). `flush` ends the stream with whatever the full decode holds beyond
    the text already given, so the pieces add up to `decode(ids)`."""

    def __init__(self, tokenizer: HFTokenizer) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self._given: list[str] = []
        self._clean = StreamCleanUp() if tokenizer._clean_up else None

    def push(self, token: int) -> str:
        self._ids.append(int(token))
        decode = self._tok._tok.decode
        before = decode(self._ids[self._prefix:self._read], skip_special_tokens=False)
        after = decode(self._ids[self._prefix:], skip_special_tokens=False)
        if len(after) <= len(before) or after.endswith(REPLACEMENT):
            return ""
        piece = after[len(before):]
        self._prefix, self._read = self._read, len(self._ids)
        if self._clean is not None:
            piece = self._clean.push(piece)
        self._given.append(piece)
        return piece

    def flush(self) -> str:
        tail = self._clean.flush() if self._clean is not None else ""
        given = "".join(self._given) + tail
        full = self._tok.decode(self._ids)
        rest = tail + (full[len(given):] if full.startswith(given) else "")
        self._given.append(rest)
        return rest


# transformers' clean-up of tokenization spaces (for WordPiece-style decoders), in order
CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
            (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))
_CLEAN_UP_CHARS = frozenset("".join(old for old, _ in CLEAN_UP))


def clean_up_tokenization(text: str) -> str:
    """transformers' clean-up of tokenization spaces (for WordPiece-style decoders)."""
    for old, new in CLEAN_UP:
        text = text.replace(old, new)
    return text


class StreamCleanUp:
    """`clean_up_tokenization` over a stream of pieces, giving exactly the clean-up of
    their concatenation. Text is released up to the last split no replacement can cross:
    before a space whose preceding character is in none of the patterns (every match that
    crossed it would contain that character, in any of the passes); the rest waits."""

    def __init__(self) -> None:
        self._held = ""

    def push(self, piece: str) -> str:
        self._held += piece
        k = self._held.rfind(" ")
        while k > 0 and self._held[k - 1] in _CLEAN_UP_CHARS:
            k = self._held.rfind(" ", 0, k)
        if k <= 0:
            return ""
        out, self._held = self._held[:k], self._held[k:]
        return clean_up_tokenization(out)

    def flush(self) -> str:
        out, self._held = self._held, ""
        return clean_up_tokenization(out)


def _read(folder: Path, manifest: dict, name: str) -> dict:
    """An optional JSON file of the tokenizer ({} when the folder does not carry it)."""
    path = listed_member(folder, manifest, name, "tokenizer file")
    if path is None:
        return {}
    data = read_member_json(folder, name, name)
    return data if isinstance(data, dict) else {}


def _token_text(value) -> str:
    """A special token as tokenizer_config.json stores it: a string or an AddedToken dict."""
    return value.get("content", "") if isinstance(value, dict) else str(value)


def _chat_template(folder: Path, manifest: dict, config: dict) -> str | None:
    """As transformers loads it: chat_template.jinja first, else tokenizer_config.json's
    chat_template (a string, or named templates of which 'default' is used)."""
    path = listed_member(folder, manifest, CHAT_TEMPLATE_FILE, "chat template")
    if path is not None:
        return read_member_text(path, CHAT_TEMPLATE_FILE)
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None
