"""The artifact folder of SCR_SPEC section 4: file names, config, manifest.

Torch-free: written by the exporter, read and checked by the runtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import scredge
from scredge.config import SCRConfig
from scredge.errors import ScredgeError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
ONNX_DATA_FILE = "model.onnx.data"
MANIFEST_FILE = "manifest.json"
# SCR_SPEC section 4: Hugging Face tokenizer files an artifact may carry (listed in the
# manifest like every file). tokenizer.json is the tokenizer itself; the others are read when
# present: special tokens and chat template, the template as its own file (transformers >=
# 4.43 writes it there), legacy special tokens, and the eos ids generation stops on.
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, CHAT_TEMPLATE_FILE,
                   SPECIAL_TOKENS_MAP_FILE, GENERATION_CONFIG_FILE)
# config.json section describing the tokenizer: {"files": [...], "eos_token_ids": [...]}
TOKENIZER_KEY = "tokenizer"
FORMAT_VERSION = 1  # bump when a reader of the old layout would misread the new one


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Write `path` whole or not at all: `write(tmp)` fills a temporary file in the same
    folder (same suffix, so savers that append one do not), renamed over `path` once
    complete; readable like any other file (0644, not mkstemp's 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _entry(path: Path) -> dict:
    """A file's manifest entry."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_manifest(folder: Path) -> dict:
    """Hash every file in `folder` (recursively) into manifest.json."""
    files = {
        p.relative_to(folder).as_posix(): _entry(p) for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE
    }
    manifest = {"format_version": FORMAT_VERSION, "scredge_version": scredge.__version__,
                "files": files}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _reexport_fix(folder: Path) -> str:
    return f"re-export the folder: scredge export ... --out {folder} --force"


def verify_manifest(folder: str | Path) -> dict:
    """Check every file against manifest.json; raise naming the first file that differs."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ScredgeError("artifact folder has no manifest.json", received=str(folder),
                           expected="a folder written by `scredge export`",
                           fix=_reexport_fix(folder))
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        version = manifest["format_version"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ScredgeError("manifest.json is malformed", received=f"{path}: {exc}",
                           fix=_reexport_fix(folder)) from exc
    if version != FORMAT_VERSION:
        raise ScredgeError(
            "artifact was written by an incompatible scredge version",
            received=f"format {version} (scredge {manifest.get('scredge_version', '?')})",
            expected=f"format {FORMAT_VERSION} (scredge {scredge.__version__})",
            fix=_reexport_fix(folder))
    for name in files:  # all missing files are reported before any hashing
        if not (folder / name).is_file():
            raise ScredgeError(f"artifact file '{name}' is missing", received=str(folder),
                               expected=f"{name} as listed in manifest.json",
                               fix=_reexport_fix(folder))
    for name, entry in files.items():
        digest = sha256_file(folder / name)
        if digest != entry["sha256"]:
            raise ScredgeError(f"artifact file '{name}' does not match manifest.json",
                               received=f"sha256 {digest}",
                               expected=f"sha256 {entry['sha256']}",
                               fix=_reexport_fix(folder))
    return manifest


def read_config(folder: str | Path) -> tuple[SCRConfig, dict]:
    """The model config and the whole config.json of an artifact folder."""
    path = Path(folder) / CONFIG_FILE
    config = SCRConfig.load(path)
    return config, json.loads(path.read_text())


def add_to_manifest(folder: str | Path, files: list[str], **sections: dict) -> dict:
    """List new files (paths relative to `folder`) in manifest.json and merge `sections`
    (e.g. engines=...) into it; the manifest is rewritten atomically."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    for name in files:
        manifest["files"][name] = _entry(folder / name)
    for key, value in sections.items():
        manifest[key] = {**manifest.get(key, {}), **value}
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2) + "\n"))
    return manifest
