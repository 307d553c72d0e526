"""Writing files and folders so that a reader never sees half of one: atomic file writes,
folder replacement re-checked at the moment of the swap under a lock, and the recovery of a
replacement a kill interrupted. Torch-free; used by export, export-hf, training and the
benchmarks' result files."""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

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


def refuse_disk_full(exc: BaseException, out: Path) -> None:
    """A full disk or quota (ENOSPC, EDQUOT) met while writing the folder for `out` as the
    user error it is; called once the caller has removed what it wrote (any other error
    is left to propagate as it is)."""
    if not isinstance(exc, OSError) or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return
    try:
        free = f"{shutil.disk_usage(out.parent).free / 2**20:,.0f} MiB free there now"
    except OSError:
        free = "free space unknown"
    raise ScredgeError("the disk filled up while the folder was written",
                       received=f"{exc.strerror} under {out.parent} ({free})",
                       expected="room for the whole folder beside it",
                       fix="free some space or choose a folder on a larger disk; nothing was "
                           "left behind (a folder already there is unchanged)") from exc


def replace_folder(tmp: Path, out: Path, check: Callable[[Path], None]) -> None:
    """Rename the finished folder `tmp` to `out`, re-checking `out` at that moment.

    Under an exclusive lock on `out`'s parent folder (every scredge replace takes it, so
    two runs never interleave their renames): a previous interrupted replacement is
    restored or reported (`recover_hidden`); `check(out)` (the caller's own test of a
    replaceable destination, run at the start too) must pass again now, so a folder that
    appeared or changed during the run is refused, never replaced; an existing `out` is
    moved aside to `.NAME.old-PID`, `tmp` renamed in (the old one put back if that fails),
    and the old one checked once more before it is deleted: if it changed between the
    check and the rename it is kept as `.NAME.kept-PID` and reported, never deleted."""
    with destination_lock(out):
        recover_hidden(out)
        check(out)
        if not os.path.lexists(out):
            try:
                os.rename(tmp, out)
            except OSError as exc:  # a non-empty folder made there since the check
                raise ScredgeError("the output folder appeared while this command ran",
                                   received=f"{out}: {exc.strerror}",
                                   fix="nothing was replaced; choose another output or "
                                       "run again") from exc
            return
        old = out.parent / f".{out.name}{OLD_INFIX}{os.getpid()}"
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(old, out)
            raise
        try:
            check(old)
        except ScredgeError as exc:
            kept = out.parent / f".{out.name}{KEPT_INFIX}{os.getpid()}"
            os.rename(old, kept)
            raise ScredgeError("the output was replaced, but its previous contents changed "
                               "while it was being replaced; they were kept, not deleted",
                               received=f"{exc.what}", expected=f"the new output at {out}",
                               fix=f"look through {kept}, then remove it") from exc
        shutil.rmtree(old, ignore_errors=True)


def check_folder_place(out: Path) -> None:
    """OUT can become a folder: it is not a file or a link, and its parent exists."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ScredgeError("OUT exists and is not a folder", received=str(out),
                           fix="choose another OUT")
    if not out.parent.is_dir():
        raise ScredgeError("OUT's parent folder does not exist", received=str(out.parent),
                           fix=f"create it first: mkdir -p {out.parent}")


OLD_INFIX = ".old-"  # `.NAME.old-PID`: the previous folder during a replacement
KEPT_INFIX = ".kept-"  # `.NAME.kept-PID`: a previous folder that changed, kept for the user


@contextmanager
def destination_lock(out: Path) -> Iterator[None]:
    """An exclusive lock on `out`'s parent folder for the few renames of a replacement
    (released by the kernel however the process ends)."""
    try:
        fd = os.open(out.parent, os.O_RDONLY)
    except OSError as exc:
        raise ScredgeError("cannot open the output's parent folder",
                           received=f"{out.parent}: {exc.strerror}",
                           fix="create it first, or choose another output") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def recover_hidden(out: Path) -> None:
    """A replacement killed between its two renames leaves the previous folder hidden as
    `.NAME.old-PID` (no live run has one outside the destination lock, which the caller
    holds). With `out` missing the newest such folder is put back at `out` and the run
    stops, saying so; with `out` present, the hidden one is reported, never deleted."""
    pattern = f".{glob.escape(out.name)}{OLD_INFIX}*"
    hidden = sorted(out.parent.glob(pattern), key=lambda p: p.lstat().st_mtime)
    if not hidden:
        return
    if not os.path.lexists(out):
        os.rename(hidden[-1], out)
        raise ScredgeError("an interrupted replacement had left the previous output hidden; "
                           "it is restored", received=f"{hidden[-1].name} -> {out}",
                           expected="nothing hidden beside the output",
                           fix="run the command again (with --force to replace it)")
    raise ScredgeError("an interrupted replacement left a previous output beside this one",
                       received=", ".join(str(p) for p in hidden),
                       expected="nothing hidden beside the output",
                       fix="look through it and remove it (or move it back over the output)")


class FolderLock:
    """An exclusive lock on a folder that a command writes file by file over its whole run
    (a training run: its checkpoints stay in place for --resume, so the folder cannot be
    built aside and swapped in by `replace_folder`). A second run into the same folder is
    refused at once rather than interleaving its files with this one's, and `check()`,
    called before each write, refuses a folder moved away or replaced meanwhile (its path
    no longer names the locked folder), so nothing is written over what is there now."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._fd: int | None = None
        self._id: tuple[int, int] | None = None

    def __enter__(self) -> FolderLock:
        try:
            self._fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            raise ScredgeError("cannot open the output folder", received=f"{self.folder}: "
                               f"{exc.strerror}", fix="choose another output") from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise ScredgeError("another scredge run is writing this folder",
                               received=str(self.folder), expected="one run per folder",
                               fix="wait for that run to end, or choose another output") from None
        st = os.fstat(self._fd)
        self._id = (st.st_dev, st.st_ino)
        return self

    def check(self) -> None:
        try:
            st = os.lstat(self.folder)
            same = (st.st_dev, st.st_ino) == self._id
        except OSError:
            same = False
        if not same:
            raise ScredgeError("the output folder was moved or replaced while this run wrote "
                               "it; nothing was written over what is there now",
                               received=str(self.folder),
                               expected="the folder this run started in",
                               fix="find the moved folder (its last checkpoint resumes "
                                   "there), or start again with a new output")

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
