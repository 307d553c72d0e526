"""Hashing as the weights are written (export/stream_write.py): each manifest entry against
the file's own sha256 read back (scredge.artifact.sha256_file, the oracle)."""

import torch

from scredge.artifact import sha256_file
from scredge.export.stream_write import HashedFile, write_safetensors


def test_safetensors_entry_is_the_files_hash(tmp_path):
    """The hash-only pass (path None) names the same bytes the written file holds."""
    params = {"b": torch.arange(6, dtype=torch.float32).reshape(2, 3),
              "a": torch.ones(5, dtype=torch.float16)}
    written = write_safetensors(params, tmp_path / "w.safetensors", {"format": "pt"})
    assert written == {"sha256": sha256_file(tmp_path / "w.safetensors"),
                       "bytes": (tmp_path / "w.safetensors").stat().st_size}
    assert write_safetensors(params, None, {"format": "pt"}) == written
    assert not (tmp_path / "None").exists()


def test_hashed_file_counts_every_byte(tmp_path):
    with HashedFile(tmp_path / "f") as f:
        for k in range(5):
            f.write(bytes([k]) * (1000 * k + 1))
    assert f.entry() == {"sha256": sha256_file(tmp_path / "f"), "bytes": 10005}
