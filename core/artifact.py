"""The artifact folder of SCR_SPEC section 4: file names, config, manifest.

Torch-free: written by the exporter, read and checked by the runtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import scredge
from scredge.config import SCRConfig
from scredge.contract import (
    CONFIG_FILE,
    FORMAT_VERSION,
    GRAPH_VERSION,
    GRAPH_VERSION_KEY,
    GRAPH_VERSION_V3,
    MANIFEST_FILE,
    WEIGHTS_FILE,
)
from scredge.errors import ScredgeError


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


def replace_folder(tmp: Path, out: Path) -> None:
    """Rename the finished folder `tmp` to `out`: an existing `out` (its replaceability
    already checked by the caller) is moved aside first and removed last, and put back if
    the rename fails, so `out` is never half-written."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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


MAX_JSON_BYTES = 16 << 20  # manifest.json and config.json are small; a huge one is not ours
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


def read_member_json(folder: str | Path, name: str, what: str) -> object:
    """A small JSON file of the folder, read only from inside it; ScredgeError for
    anything that is not one."""
    folder = Path(folder)
    path = member_path(folder, name, what)
    try:
        size = path.stat().st_size
        if not path.is_file() or size > MAX_JSON_BYTES:
            raise ScredgeError(f"artifact {what} is not a small JSON file", received=f"{path}: "
                               f"{'not a file' if not path.is_file() else f'{size} bytes'}",
                               expected=f"a file under {MAX_JSON_BYTES} bytes",
                               fix=_reexport_fix(folder))
        return json.loads(path.read_bytes())
    except OSError as exc:
        raise ScredgeError(f"cannot read artifact {what}", received=f"{path}: {exc.strerror}",
                           fix=_reexport_fix(folder)) from exc
    except (ValueError, RecursionError) as exc:  # JSON or UTF-8 errors; absurd nesting
        raise ScredgeError(f"artifact {what} is malformed", received=f"{path}: {exc}"[:300],
                           expected="JSON as written by scredge",
                           fix=_reexport_fix(folder)) from exc


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


def read_member_text(path: Path, what: str, limit: int = MAX_JSON_BYTES) -> str:
    """A small UTF-8 text file already resolved by `member_path`; ScredgeError otherwise."""
    try:
        if path.stat().st_size > limit:
            raise ScredgeError(f"artifact {what} is too large", received=f"{path}: "
                               f"{path.stat().st_size} bytes", expected=f"under {limit} bytes",
                               fix=_reexport_fix(path.parent))
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScredgeError(f"cannot read artifact {what}", received=f"{path}: {exc.strerror}",
                           fix=_reexport_fix(path.parent)) from exc
    except UnicodeDecodeError as exc:
        raise ScredgeError(f"artifact {what} is not UTF-8 text", received=f"{path}: {exc}"[:300],
                           fix=_reexport_fix(path.parent)) from exc


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


def read_config(folder: str | Path) -> tuple[SCRConfig, dict]:
    """The model config and the whole config.json of an artifact folder, read from inside
    it; every malformed field a ScredgeError."""
    folder = Path(folder)
    settings = read_member_json(folder, CONFIG_FILE, CONFIG_FILE)
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
    return config, settings


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
    manifest = json.loads(path.read_text())
    for name in files:
        manifest["files"][name] = _entry(folder / name)
    for key, value in sections.items():
        manifest[key] = {**manifest.get(key, {}), **value}
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2) + "\n"))
    return manifest
