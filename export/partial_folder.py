"""The export's partial folder beside its destination (`.NAME.partial-XXXX`, written, verified,
then renamed into place, export/pipeline.py): which destinations `--force` may replace, the
lock a live export holds on its folder, and the stale folders an interrupted one left."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from scredge import contract
from scredge.artifact import check_manifest, read_member_json
from scredge.errors import ScredgeError

PARTIAL_INFIX = ".partial-"  # `.NAME.partial-XXXX`: an export in progress beside NAME


def check_destination(out: Path, force: bool) -> None:
    """`out` is new, or (with force) a folder `check_replaceable` passes: checked at the
    start and again by replace_folder at the moment of the replacement."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ScredgeError("output path exists and is not a folder", received=str(out),
                           fix="choose another --out; scredge replaces only its own folders")
    if out.exists() and not force:
        raise ScredgeError("output folder already exists", received=str(out),
                           fix="pass --force to replace it, or choose another --out")
    if out.exists():
        check_replaceable(out)


def check_replaceable(out: Path) -> None:
    """--force replaces only an empty folder or a scredge artifact: one whose manifest.json
    lists every file in it (so nothing of the user's inside it goes with it)."""
    try:
        found = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                       if not p.is_dir() or p.is_symlink())
    except OSError as exc:
        raise ScredgeError("cannot read the output folder", received=f"{out}: {exc}",
                           fix="choose another --out") from exc
    if not found:
        return
    try:
        manifest = verify_manifest_listing(out)
    except ScredgeError as exc:
        raise ScredgeError(
            "--force replaces only a scredge artifact folder (or an empty one); this is not one",
            received=f"{out} holds {_listing(found)} ({exc.what})",
            expected="a folder written by `scredge export`, or an empty folder",
            fix="choose another --out, or move its contents away yourself") from exc
    unlisted = [f for f in found if f != contract.MANIFEST_FILE and f not in manifest]
    if unlisted:
        raise ScredgeError(
            "--force would delete files the artifact's manifest does not list",
            received=f"{out} holds {_listing(unlisted)} besides the artifact",
            expected="only the files its manifest.json lists",
            fix="move those files out of the folder, or choose another --out")


def verify_manifest_listing(folder: Path) -> set[str]:
    """The files an artifact folder's manifest lists (structure checked, not hashes)."""
    manifest = check_manifest(
        read_member_json(folder, contract.MANIFEST_FILE, contract.MANIFEST_FILE), folder)
    return set(manifest["files"])


def _listing(names: list[str], most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def clean_stale_partials(out: Path, log: Callable[[str], None] = lambda s: None) -> list[Path]:
    """Remove `.NAME.partial-*` folders that an interrupted export (kill -9) left beside
    `out`. A live export holds an exclusive lock on its folder, so only folders nobody
    locks are stale; and only folders of plain files (what an export writes) are removed."""
    removed = []
    for tmp in sorted(out.parent.glob(f".{glob_escape(out.name)}{PARTIAL_INFIX}*")):
        if tmp.is_symlink() or not tmp.is_dir() or _locked(tmp):
            continue
        entries = list(tmp.iterdir())
        if any(e.is_symlink() or not e.is_file() for e in entries):
            continue  # not what an export writes: not ours to delete
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"removed {tmp.name}, left by an interrupted export")
        removed.append(tmp)
    return removed


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def _lock(folder: Path) -> int:
    """An exclusive lock on `folder`, held while the descriptor is open (freed by the
    kernel when the process dies, however it dies)."""
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _locked(folder: Path) -> bool:
    try:
        fd = _lock(folder)
    except BlockingIOError:
        return True
    except OSError:
        return True  # cannot tell: leave it alone
    os.close(fd)
    return False


def _share_permissions(tmp: Path) -> None:
    """mkdtemp/mkstemp create private files: give the folder the modes the umask gives."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [tmp, *tmp.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)
