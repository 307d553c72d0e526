"""What `scredge export --force` may replace, and what an interrupted export leaves
(issue 14). Oracle: the files on disk before and after (`snapshot`)."""

from __future__ import annotations

import fcntl
import os

import pytest
from artifact_tools import copy_artifact, snapshot

from scredge.cli import main
from scredge.errors import ScredgeError
from scredge.export.pipeline import check_options, clean_stale_partials, export_artifact


def _force(out):
    check_options(out.absolute(), "float32", 18, True, None)


def test_force_refuses_a_folder_that_is_not_an_artifact(tmp_path, capsys):
    """Before: --force deleted a folder of the user's notes."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine\n")
    (notes / "sub").mkdir()
    (notes / "sub" / "b.txt").write_text("mine too\n")
    before = snapshot(tmp_path)
    with pytest.raises(ScredgeError, match=r"only a scredge artifact(.|\n)*todo.txt"):
        _force(notes)
    assert main(["export", "--preset", "tiny", "--out", str(notes), "--force"]) == 2
    err = capsys.readouterr().err
    assert "sub/b.txt" in err and "todo.txt" in err
    assert snapshot(tmp_path) == before


def test_force_refuses_an_artifact_holding_unlisted_files(small_window_artifact, tmp_path):
    art = copy_artifact(small_window_artifact[1], tmp_path / "art")
    (art / "my_notes.md").write_text("results\n")
    before = snapshot(tmp_path)
    with pytest.raises(ScredgeError, match=r"does not list(.|\n)*my_notes.md"):
        _force(art)
    assert snapshot(tmp_path) == before
    (art / "my_notes.md").unlink()
    _force(art)  # the artifact alone: replaceable


def test_force_refuses_a_file_or_a_link(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ScredgeError, match="not a folder"):
        _force(tmp_path / "f")
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "d")
    with pytest.raises(ScredgeError, match="not a folder"):
        _force(tmp_path / "link")
    _force(tmp_path / "d")  # empty: fine


def test_stale_partials_are_cleaned_live_ones_kept(tmp_path, micro):
    """A kill -9 during export leaves `.NAME.partial-*`; the next export removes it, but not
    one a live export holds (locked), nor one holding what an export never writes."""
    from scredge.ref import build_model

    out = tmp_path / "art"
    stale = tmp_path / ".art.partial-dead1"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    live = tmp_path / ".art.partial-live1"
    live.mkdir()
    foreign = tmp_path / ".art.partial-user"
    (foreign / "dir").mkdir(parents=True)
    other = tmp_path / ".other.partial-x"
    other.mkdir()
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        export_artifact(build_model(micro, seed=0), out)
        assert not stale.exists() and live.exists() and foreign.exists() and other.exists()
    finally:
        os.close(fd)
    assert clean_stale_partials(out) == [live]  # unlocked now: stale
    assert sorted(p.name for p in tmp_path.iterdir()) == [".art.partial-user",
                                                          ".other.partial-x", "art"]
