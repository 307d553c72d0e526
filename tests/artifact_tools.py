"""Test helpers that tamper with an artifact folder the way a hostile but careful user
would: edit a file, then recompute the manifest's hashes so only the content is wrong."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path


def copy_artifact(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def rehash(folder: Path) -> None:
    """Recompute sha256 and size of every file the manifest lists (where it exists and is
    a str path inside the folder), keeping every other key as it is."""
    path = folder / "manifest.json"
    manifest = read_json(path)
    files = manifest.get("files")
    if isinstance(files, dict):
        for name, entry in files.items():
            target = folder / name
            if isinstance(entry, dict) and ".." not in name and target.is_file():
                data = target.read_bytes()
                entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    path.write_text(json.dumps(manifest))


def edit_config(folder: Path, **model_fields) -> None:
    """Change model fields of config.json and rehash, as a user editing it would."""
    path = folder / "config.json"
    settings = read_json(path)
    settings["model"].update(model_fields)
    path.write_text(json.dumps(settings))
    rehash(folder)


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under `roots` with its content: compared before and after a test."""
    return {str(p): p.read_bytes() for root in roots for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}
