"""Checkpoints shipped with scredge, trained by `scredge train` (see pretrained/*.json).

Each `pretrained/<name>.safetensors` has a record `pretrained/<name>.json` holding its
sha256, the exact training command and the final validation loss. `path(name)` checks
the file against that record before anything loads it, so a truncated or swapped file
is refused by name instead of producing a model that quietly writes nonsense.
Torch-free: hashing and JSON only.
"""

from __future__ import annotations

import json
from pathlib import Path

from scredge.artifact import sha256_file
from scredge.errors import ScredgeError

FOLDER = Path(__file__).with_name("pretrained")


def names() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.json"))


def record(name: str) -> dict:
    """The training record of a shipped checkpoint (command, data, losses, sha256)."""
    path = FOLDER / f"{name}.json"
    if not path.is_file():
        raise ScredgeError("no shipped checkpoint by that name", received=repr(name),
                           expected=f"one of {names()}",
                           fix="train one: scredge train --preset tiny --out DIR")
    return json.loads(path.read_text())


def path(name: str) -> Path:
    """The checkpoint file, verified against its record's sha256."""
    info = record(name)
    weights = FOLDER / info["file"]
    if not weights.is_file():
        raise ScredgeError("shipped checkpoint file missing", received=str(weights),
                           expected=f"{info['file']} next to {name}.json",
                           fix="reinstall scredge, or retrain: " + " ".join(info["command"]))
    digest = sha256_file(weights)
    if digest != info["sha256"]:
        raise ScredgeError("shipped checkpoint does not match its record",
                           received=f"{weights}: sha256 {digest[:16]}...",
                           expected=f"sha256 {info['sha256'][:16]}... ({name}.json)",
                           fix="reinstall scredge (git checkout the file), or retrain: "
                               + " ".join(info["command"]))
    return weights
