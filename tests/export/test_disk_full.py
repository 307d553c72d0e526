"""A disk that fills mid-export (issue 27, bad input): the one user error, and nothing left
behind. Oracles: the file system (no staging folder, the old folder's manifest still
verifies) and ENOSPC injected where the streamed weights are written."""

from __future__ import annotations

import errno
import shutil

import pytest

from scredge.artifact import verify_manifest
from scredge.config import SCRConfig
from scredge.errors import ScredgeError
from scredge.export import stream_write
from scredge.export.pipeline import export_artifact
from scredge.ref import build_model

# four layers: the streamed (stamped) path, whose weights go through HashedFile
CFG = SCRConfig(vocab_size=256, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=64,
                scr_layers=(1, 2))


@pytest.mark.parametrize("keep", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_disk_full_mid_export_leaves_nothing(tmp_path, monkeypatch, keep):
    model = build_model(CFG, seed=2)
    old = tmp_path / "old"
    export_artifact(model, old, keep_reference=keep)
    out = tmp_path / "art"
    shutil.copytree(old, out)
    real_write = stream_write.HashedFile.write
    written = {"n": 0}

    def fill_up(self, data):
        written["n"] += 1
        if written["n"] > 3:  # a few writes succeed, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, data)

    monkeypatch.setattr(stream_write.HashedFile, "write", fill_up)
    with pytest.raises(ScredgeError, match="disk filled up") as err:
        export_artifact(model, out, force=True, keep_reference=keep)
    assert "No space left on device" in str(err.value)
    verify_manifest(out)  # the old folder, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "old"]  # no staging left


@pytest.mark.slow
def test_other_write_errors_propagate_as_they_are(tmp_path, monkeypatch):
    """Only a full disk or quota becomes the disk-full error."""
    def broken(self, data):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(stream_write.HashedFile, "write", broken)
    with pytest.raises(OSError, match="Input/output"):
        export_artifact(build_model(CFG), tmp_path / "art")
    assert list(tmp_path.iterdir()) == []
