"""Parity fixtures: a copy of the W = 16 micro artifact with its golden file recorded."""

from __future__ import annotations

import shutil

import pytest

from scredge.cli import main


def _recorded_copy(artifact, name: str, tmp_path_factory):
    """A copy of `artifact`'s folder with its golden file recorded by `scredge parity`."""
    folder = tmp_path_factory.mktemp("parity") / name
    shutil.copytree(artifact[1], folder)
    assert main(["parity", str(folder), "--record"]) == 0
    return folder


@pytest.fixture(scope="module")
def recorded(small_window_artifact, tmp_path_factory):
    return _recorded_copy(small_window_artifact, "a", tmp_path_factory)


@pytest.fixture(scope="module")
def recorded_concat(small_window_concat, tmp_path_factory):
    """The same weights exported --cache concat, recorded: the form --dump replays."""
    return _recorded_copy(small_window_concat, "c", tmp_path_factory)
