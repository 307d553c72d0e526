"""The artifact folder of SCR_SPEC section 4: file names, config, manifest.

Torch-free: written by the exporter, read and checked by the runtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import scredge
from scredge.config import SCRConfig
from scredge.contract import (
    CONFIG_FILE,
    FORMAT_VERSION,
    GRAPH_VERSION,
    GRAPH_VERSION_KEY,
    GRAPH_VERSION_V3,
    KEEP_REFERENCE_FLAG,
    MANIFEST_FILE,
    QUANT_CONFIG_KEY,
    REFERENCE_KEY,
    TOKENIZER_KEY,
    WEIGHTS_FILE,
)
from scredge.destination import atomic_write
from scredge.errors import ScredgeError
from scredge.files import decode_text, parse_json, read_bytes_limited, read_json_limited
from scredge.limits import MAX_JSON_BYTES, MAX_TEXT_BYTES


def sha256_file(*paths: Path) -> str:
    """sha256 of the file (or of several files' bytes, in the order given), streamed."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _entry(path: Path) -> dict:
    """A file's manifest entry."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_manifest(folder: Path, known: dict[str, dict] | None = None) -> dict:
    """Hash every file in `folder` (recursively) into manifest.json; `known`: entries of
    files hashed as they were written (used when the file's size still agrees)."""
    known = known or {}
    files = {}
    for p in sorted(folder.rglob("*")):
        name = p.relative_to(folder).as_posix()
        if p.is_file() and p.name != MANIFEST_FILE:
            entry = known.get(name)
            files[name] = (entry if entry is not None and entry["bytes"] == p.stat().st_size
                           else _entry(p))
    manifest = {"format_version": FORMAT_VERSION, "scredge_version": scredge.__version__,
                "files": files}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _reexport_fix(folder: Path) -> str:
    return f"re-export the folder: scredge export ... --out {folder} --force"


_SHA256_LEN = 64


def member_path(folder: str | Path, name: object, what: str = "manifest entry") -> Path:
    """The path of `name` inside `folder`, refusing any name that could leave it: not a
    relative POSIX path, `..` or `.` parts, an absolute path, a NUL, or a symlink (of the
    file or of a folder on the way) that resolves outside the folder."""
    folder = Path(folder)
    parts = name.split("/") if isinstance(name, str) else []
    if (not isinstance(name, str) or not name or "\0" in name or name.startswith("/")
            or any(p in ("", ".", "..") for p in parts)):
        raise ScredgeError(f"artifact {what} names a path outside its folder",
                           received=repr(name)[:200],
                           expected="a relative path inside the folder (no '..', not absolute)",
                           fix=_reexport_fix(folder))
    try:
        os.fsencode(name)
    except UnicodeEncodeError as exc:  # a lone surrogate no file name can hold
        raise ScredgeError(f"artifact {what} is not a file name", received=ascii(name)[:200],
                           fix=_reexport_fix(folder)) from exc
    root = folder.resolve()
    path = root.joinpath(*parts)
    try:
        inside = path.resolve().is_relative_to(root)
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise ScredgeError(f"artifact {what} cannot be resolved", received=f"{name}: {exc}",
                           fix=_reexport_fix(folder)) from exc
    if not inside:
        raise ScredgeError(f"artifact {what} is a symlink leading outside its folder",
                           received=f"{name} -> {path.resolve()}",
                           expected="every file of the folder inside it",
                           fix=_reexport_fix(folder))
    return path


def read_member_json(folder: str | Path, name: str, what: str,
                     manifest: dict | None = None) -> object:
    """A small JSON file of the folder, read only from inside it (and, given the verified
    `manifest`, checked against it: the bytes parsed are the bytes hashed); ScredgeError
    for anything that is not one."""
    folder = Path(folder)
    if manifest is not None:
        data = read_listed_bytes(folder, manifest, name, what, MAX_JSON_BYTES)
    else:
        data = read_bytes_limited(member_path(folder, name, what), f"artifact {what}",
                                  MAX_JSON_BYTES, fix=_reexport_fix(folder))
    return parse_json(data, str(folder / name), f"artifact {what}", _reexport_fix(folder),
                      expected="JSON as written by scredge")


def listed_member(folder: str | Path, manifest: dict, name: str, what: str) -> Path | None:
    """The path of an optional file of the folder, only when manifest.json lists it (so it
    lies inside the folder and was size- and hash-checked when the folder was opened). None
    when the folder does not carry it; a file that is there but unlisted is refused, never
    read, and never silently skipped for a default."""
    path = member_path(folder, name, what)
    if name in manifest["files"]:
        return path
    if path.exists() or path.is_symlink():
        raise ScredgeError(f"the folder holds {what} '{name}' that manifest.json does not list",
                           received=str(path),
                           expected="every file scredge reads listed with its sha256 in "
                                    "manifest.json",
                           fix=f"remove {path}, or {_reexport_fix(Path(folder))}")
    return None


def read_member_text(folder: str | Path, manifest: dict, name: str, what: str,
                     limit: int = MAX_TEXT_BYTES) -> str:
    """A listed UTF-8 text file of the folder: the bytes decoded are the bytes hashed."""
    data = read_listed_bytes(folder, manifest, name, what, limit)
    return decode_text(data, Path(folder) / name, f"artifact {what}",
                       _reexport_fix(Path(folder)))


def read_listed_bytes(folder: str | Path, manifest: dict, name: str, what: str,
                      limit: int | None = None) -> bytes:
    """The bytes of a file `manifest` lists, read once and checked against its size and
    sha256 there: the trust boundary every reader of an artifact goes through, so what a
    caller parses or loads is what was verified (a file swapped or edited after the
    folder was opened is refused, never used). `limit`: the most bytes this kind of
    file may have."""
    folder = Path(folder)
    entry = manifest["files"].get(name)
    if entry is None:
        raise ScredgeError(f"manifest.json does not list '{name}'", received=str(folder),
                           expected=f"{name} listed and hashed", fix=_reexport_fix(folder))
    if limit is not None and entry["bytes"] > limit:
        raise ScredgeError(f"artifact {what} is too large", received=f"{entry['bytes']} bytes",
                           expected=f"at most {limit} bytes", fix=_reexport_fix(folder))
    path = member_path(folder, name, what)
    try:
        data = read_bytes_limited(path, f"artifact {what}", entry["bytes"],
                                  fix=_reexport_fix(folder))
        digest = hashlib.sha256(data).hexdigest()
    except ScredgeError as exc:  # grown past its listed size
        data, digest = b"", exc.received
    if len(data) != entry["bytes"] or digest != entry["sha256"]:
        raise ScredgeError(f"artifact file '{name}' changed after the folder was opened",
                           received=f"{len(data)} bytes, sha256 {digest}" if data else digest,
                           expected=f"{entry['bytes']} bytes, sha256 {entry['sha256']} as "
                                    "manifest.json lists",
                           fix=_reexport_fix(folder))
    return data


def _malformed(folder: Path, received: str, expected: str) -> ScredgeError:
    return ScredgeError("manifest.json is malformed", received=received[:300],
                        expected=expected, fix=_reexport_fix(folder))


def check_manifest(manifest: object, folder: Path) -> dict:
    """The manifest's structure: `files` maps safe relative paths to {sha256, bytes};
    `engines` (optional) maps names to entries whose `file` is a listed file."""
    if not isinstance(manifest, dict):
        raise _malformed(folder, f"a JSON {type(manifest).__name__}", "a JSON object")
    for key in ("format_version", "files"):
        if key not in manifest:
            raise _malformed(folder, f"keys {sorted(manifest)}", f"a '{key}' key")
    files = manifest["files"]
    if not isinstance(files, dict):
        raise _malformed(folder, f"files: {type(files).__name__}", "files: an object")
    for name, entry in files.items():
        member_path(folder, name, "manifest file")
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and len(entry["sha256"]) == _SHA256_LEN
                and isinstance(entry.get("bytes"), int) and not isinstance(entry["bytes"], bool)
                and entry["bytes"] >= 0):
            raise _malformed(folder, f"files[{name!r}]: {entry!r}",
                             "{\"sha256\": 64 hex digits, \"bytes\": an integer >= 0}")
    engines = manifest.get("engines", {})
    if not isinstance(engines, dict):
        raise _malformed(folder, f"engines: {type(engines).__name__}", "engines: an object")
    for key, entry in engines.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise _malformed(folder, f"engines[{key!r}]: {entry!r}",
                             "an object with a 'file' listed in files")
        member_path(folder, entry["file"], f"engine '{key}' file")
        if entry["file"] not in files:
            raise ScredgeError(f"engine '{key}' names a file manifest.json does not list",
                               received=repr(entry["file"])[:200],
                               expected="an engine file listed (and hashed) in files",
                               fix=_reexport_fix(folder))
    return manifest


def verify_manifest(folder: str | Path, required: tuple[str, ...] = ()) -> dict:
    """Check every file against manifest.json; raise naming the first file that differs.
    `required`: files the caller will read, which must be listed (and so hashed)."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ScredgeError("artifact folder has no manifest.json", received=str(folder),
                           expected="a folder written by `scredge export`",
                           fix=_reexport_fix(folder))
    manifest = read_member_json(folder, MANIFEST_FILE, MANIFEST_FILE)
    if isinstance(manifest, dict) and "format_version" in manifest and (
            manifest["format_version"] != FORMAT_VERSION):
        version = manifest["format_version"]
        raise ScredgeError(
            "artifact was written by an incompatible scredge version",
            received=f"format {version!r} (scredge {manifest.get('scredge_version', '?')!r})",
            expected=f"format {FORMAT_VERSION} (scredge {scredge.__version__})",
            fix=_reexport_fix(folder))
    files = check_manifest(manifest, folder)["files"]
    for name in required:
        if name not in files:
            raise ScredgeError(f"manifest.json does not list '{name}'",
                               received=f"files: {sorted(files)[:20]}",
                               expected=f"{name} listed and hashed", fix=_reexport_fix(folder))
    for name in files:  # all missing files are reported before any hashing
        if not member_path(folder, name, "manifest file").is_file():
            raise ScredgeError(f"artifact file '{name}' is missing", received=str(folder),
                               expected=f"{name} as listed in manifest.json",
                               fix=_reexport_fix(folder))
    for name, entry in files.items():
        member = member_path(folder, name, "manifest file")
        size = member.stat().st_size
        if size != entry["bytes"]:  # cheap, and no hashing of a file swapped for a huge one
            raise ScredgeError(f"artifact file '{name}' does not match manifest.json",
                               received=f"{size} bytes", expected=f"{entry['bytes']} bytes",
                               fix=_reexport_fix(folder))
        digest = sha256_file(member)
        if digest != entry["sha256"]:
            raise ScredgeError(f"artifact file '{name}' does not match manifest.json",
                               received=f"sha256 {digest}",
                               expected=f"sha256 {entry['sha256']}",
                               fix=_reexport_fix(folder))
    return manifest


def read_config(folder: str | Path, manifest: dict | None = None) -> tuple[SCRConfig, dict]:
    """The model config and the whole config.json of an artifact folder, read from inside
    it (given the verified `manifest`, the bytes it lists); every malformed field a
    ScredgeError."""
    folder = Path(folder)
    settings = read_member_json(folder, CONFIG_FILE, CONFIG_FILE, manifest)
    if not isinstance(settings, dict) or not isinstance(settings.get("model"), dict):
        raise ScredgeError("config.json is malformed", received=repr(settings)[:200],
                           expected='{"model": {...}, "export": {...}, ...}',
                           fix=_reexport_fix(folder))
    for key in ("export", "io"):
        if not isinstance(settings.get(key, {}), dict):
            raise ScredgeError("config.json is malformed",
                               received=f"{key}: {settings[key]!r}"[:200],
                               expected=f"{key}: an object", fix=_reexport_fix(folder))
    try:
        config = SCRConfig.from_dict(settings["model"], source=str(folder / CONFIG_FILE))
    except (TypeError, ValueError, OverflowError) as exc:  # a field's type the checks missed
        raise ScredgeError("config.json has an invalid model field", received=str(exc)[:200],
                           fix=_reexport_fix(folder)) from exc
    check_graph_version(folder, settings)
    check_sections(folder, settings, config.vocab_size)
    return config, settings


def check_sections(folder: Path, settings: dict, vocab_size: int) -> None:
    """config.json's tokenizer and quantization sections, each field of the type the
    runtime reads (checked here, where config.json is read, not where a field is used)."""
    def bad(field: str, value: object, expected: str) -> None:
        raise ScredgeError(f"config.json field '{field}' is malformed",
                           received=repr(value)[:120], expected=expected,
                           fix=_reexport_fix(folder))

    tok = settings.get(TOKENIZER_KEY, {})
    if not isinstance(tok, dict):
        bad(TOKENIZER_KEY, tok, "an object")
    eos = tok.get("eos_token_ids", [])
    if not isinstance(eos, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size
            for i in eos):
        bad(f"{TOKENIZER_KEY}.eos_token_ids", eos, f"a list of ids in 0..{vocab_size - 1}")
    q = settings.get(QUANT_CONFIG_KEY) or {}
    if not isinstance(q, dict):
        bad(QUANT_CONFIG_KEY, q, "an object or null")
    if q:
        for key, kind in (("bits", int), ("block_size", int), ("method", str)):
            if not isinstance(q.get(key), kind) or isinstance(q.get(key), bool):
                bad(f"{QUANT_CONFIG_KEY}.{key}", q.get(key), kind.__name__)
        graphs = q.get("graphs", {})
        if not isinstance(graphs, dict) or not all(
                isinstance(g, dict) and isinstance(g.get("file", ""), str)
                for g in graphs.values()):
            bad(f"{QUANT_CONFIG_KEY}.graphs", graphs, 'an object of {"file": str, ...}')


def reference_sha256(settings: dict, manifest: dict) -> str | None:
    """The sha256 of the float32 reference weights the folder was exported from: the kept
    model.safetensors' (manifest), else the one config.json recorded; None if neither."""
    listed = manifest.get("files", {}).get(WEIGHTS_FILE)
    if listed is not None:
        return listed["sha256"]
    recorded = settings.get("export", {}).get(REFERENCE_KEY)
    return recorded.get("sha256") if isinstance(recorded, dict) else None


def reference_weights(folder: str | Path, manifest: dict, needed_by: str) -> Path:
    """The path of the folder's reference weights (listed, so hashed on open), or a
    ScredgeError saying that `needed_by` needs them and how to keep them."""
    folder = Path(folder)
    if WEIGHTS_FILE in manifest.get("files", {}):
        return member_path(folder, WEIGHTS_FILE, "reference weights")
    raise ScredgeError(
        f"{needed_by} needs the float32 reference weights, which this folder does not keep",
        received=f"no {WEIGHTS_FILE} in {folder} (a slim deployable folder)",
        expected=f"a folder exported with {KEEP_REFERENCE_FLAG}",
        fix=f"export it again with {KEEP_REFERENCE_FLAG}: scredge export ... "
            f"{KEEP_REFERENCE_FLAG} --out {folder} --force")


@contextmanager
def verified_copies(folder: str | Path, manifest: dict, names: Sequence[str]) -> Iterator[Path]:
    """A private temporary folder holding the listed files `names` of the artifact, each
    written from the bytes `read_listed_bytes` verified: for the readers that take only a
    path (torch's checkpoint loader, transformers), which then read exactly what was
    hashed, never a file swapped into the folder after it was opened. Removed on exit."""
    staging = Path(tempfile.mkdtemp(prefix=".scredge-verified-"))  # mode 0700
    try:
        for name in names:
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(read_listed_bytes(folder, manifest, name, name))
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def verified_reference_weights(folder: str | Path, manifest: dict,
                               needed_by: str) -> Iterator[Path]:
    """The path of a verified private copy of the folder's reference weights (see
    `verified_copies`); a slim folder is refused as `reference_weights` says."""
    reference_weights(folder, manifest, needed_by)
    with verified_copies(folder, manifest, [WEIGHTS_FILE]) as staging:
        yield staging / WEIGHTS_FILE


def check_graph_version(folder: Path, settings: dict) -> None:
    found = settings.get(GRAPH_VERSION_KEY, 1)
    if found in (GRAPH_VERSION, GRAPH_VERSION_V3):  # v3: the same graph, or its shared form
        return
    export = settings.get("export", {})
    redo = (f"scredge export --weights {folder / WEIGHTS_FILE} --dtype "
            f"{export.get('dtype', 'float32')} --opset {export.get('opset', 18)} "
            f"--out {folder} --force")
    older = isinstance(found, int) and found < GRAPH_VERSION
    raise ScredgeError(
        f"artifact graph version {found} is {'older than' if older else 'not'} what this "
        f"scredge runs", received=f"{GRAPH_VERSION_KEY} {found} in {folder / CONFIG_FILE}",
        expected=f"{GRAPH_VERSION_KEY} {GRAPH_VERSION} (SCR_SPEC section 3: the graph takes "
                 f"attention_mask) or {GRAPH_VERSION_V3} (v3: its shared-cache form)",
        fix=f"export it again: {redo}" if older else "use the scredge version that wrote it")


def add_to_manifest(folder: str | Path, files: list[str], **sections: dict) -> dict:
    """List new files (paths relative to `folder`) in manifest.json and merge `sections`
    (e.g. engines=...) into it; the manifest is rewritten atomically."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    manifest = read_json_limited(path, MANIFEST_FILE)
    for name in files:
        manifest["files"][name] = _entry(folder / name)
    for key, value in sections.items():
        manifest[key] = {**manifest.get(key, {}), **value}
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2) + "\n"))
    return manifest
