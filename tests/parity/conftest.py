"""Parity fixtures: a copy of the W = 16 micro artifact with its golden file recorded."""

from __future__ import annotations

import shutil

import pytest

from scredge.cli import main


@pytest.fixture(scope="module")
def recorded(small_window_artifact, tmp_path_factory):
    folder = tmp_path_factory.mktemp("parity") / "a"
    shutil.copytree(small_window_artifact[1], folder)
    assert main(["parity", str(folder), "--record"]) == 0
    return folder


@pytest.fixture(scope="module")
def recorded_concat(small_window_concat, tmp_path_factory):
    """The same weights exported --cache concat, recorded: the form --dump replays."""
    folder = tmp_path_factory.mktemp("parity") / "c"
    shutil.copytree(small_window_concat[1], folder)
    assert main(["parity", str(folder), "--record"]) == 0
    return folder
