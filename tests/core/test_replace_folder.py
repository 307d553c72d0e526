"""Folder replacement re-checks the destination at the moment it replaces it, and never
forgets a hidden previous folder (issue 30, class 5). Oracles: the files on disk after
each race (a user's file is never deleted; exactly one of two writers to a new folder
succeeds), and a process that dies between the two renames (os._exit, no clean-up) leaves
a folder the next run restores."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from scredge.destination import recover_hidden, replace_folder
from scredge.errors import ScredgeError


def _tmp_with(parent: Path, text: str) -> Path:
    tmp = parent / f".partial-{text}"
    tmp.mkdir()
    (tmp / "model.txt").write_text(text)
    return tmp


def _new_only(out: Path) -> None:
    if out.exists():
        raise ScredgeError("output folder already exists", received=str(out))


def _new_or_empty(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise ScredgeError("not empty", received=str(out))


def test_a_folder_made_at_out_during_the_run_is_refused_not_replaced(tmp_path):
    """Before: a folder created at --out while an export ran lost its file."""
    out = tmp_path / "out"
    tmp = _tmp_with(tmp_path, "new")
    out.mkdir()
    (out / "mine.txt").write_text("user data")  # appears after the start-of-run check
    with pytest.raises(ScredgeError, match="already exists"):
        replace_folder(tmp, out, _new_only)
    assert (out / "mine.txt").read_text() == "user data"
    assert (tmp / "model.txt").is_file()  # the caller removes its own partial folder


def test_a_file_written_into_an_empty_out_after_the_check_is_kept(tmp_path):
    """Before: export-hf deleted a file written into its empty OUT meanwhile. Oracle: the
    file survives in the kept folder, named in the error."""
    out = tmp_path / "out"
    out.mkdir()
    tmp = _tmp_with(tmp_path, "new")
    calls = []

    def check(path: Path) -> None:
        _new_or_empty(path)
        if not calls:  # a writer slips in right after the check passes
            (path / "late.txt").write_text("late user data")
        calls.append(path)

    with pytest.raises(ScredgeError, match="kept, not deleted") as err:
        replace_folder(tmp, out, check)
    kept = next(tmp_path.glob(".out.kept-*"))
    assert (kept / "late.txt").read_text() == "late user data"
    assert str(kept) in str(err.value)
    assert (out / "model.txt").read_text() == "new"


def _writer(parent: str, name: str, barrier, results) -> None:
    parent_path = Path(parent)
    tmp = _tmp_with(parent_path, name)

    def slow_check(out: Path) -> None:
        time.sleep(0.2)  # widen the window between check and rename
        _new_only(out)

    barrier.wait()
    try:
        replace_folder(tmp, parent_path / "out", slow_check)
        results.put(("wrote", name))
    except ScredgeError:
        results.put(("refused", name))


def test_two_writers_to_one_new_folder_one_wins(tmp_path):
    """Before: two exports to one new --out both said "wrote". Oracle: one 'wrote', one
    'refused', and the folder holds the winner's file."""
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), n, barrier, results))
             for n in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    outcome = sorted(results.get(timeout=5) for _ in procs)
    assert [o for o, _ in outcome] == ["refused", "wrote"]
    winner = next(n for o, n in outcome if o == "wrote")
    assert (tmp_path / "out" / "model.txt").read_text() == winner


def _die_between_renames(parent: str) -> None:
    real_rename = os.rename

    def rename(src, dst):
        real_rename(src, dst)
        if ".old-" in str(dst):
            os._exit(9)  # killed right after hiding the old folder

    os.rename = rename
    parent_path = Path(parent)
    replace_folder(_tmp_with(parent_path, "new"), parent_path / "out",
                   lambda out: None)


def test_a_kill_between_the_renames_is_restored_by_the_next_run(tmp_path):
    """Oracle: after the child dies with the old folder hidden, the next replace restores
    it to OUT and says so; nothing is forgotten."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.txt").write_text("old")
    child = multiprocessing.get_context("fork").Process(target=_die_between_renames,
                                                        args=(str(tmp_path),))
    child.start()
    child.join(30)
    assert child.exitcode == 9 and not out.exists()
    assert list(tmp_path.glob(".out.old-*"))
    with pytest.raises(ScredgeError, match="restored"):
        replace_folder(_tmp_with(tmp_path, "next"), out, lambda o: None)
    assert (out / "model.txt").read_text() == "old"
    assert not list(tmp_path.glob(".out.old-*"))


def test_a_hidden_folder_beside_a_present_out_is_reported(tmp_path):
    """Oracle: with OUT present, the leftover is named in the error and left in place."""
    out = tmp_path / "out"
    out.mkdir()
    hidden = tmp_path / ".out.old-12345"
    hidden.mkdir()
    (hidden / "model.txt").write_text("older")
    with pytest.raises(ScredgeError, match="left a previous output"):
        recover_hidden(out)
    assert (hidden / "model.txt").read_text() == "older"
