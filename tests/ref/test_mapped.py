"""scr_ref.mapped: memory-mapped safetensors. Oracle: safetensors' own reader (load_file)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from scredge.errors import ScredgeError
from scredge.ref.mapped import MappedSafetensors


def test_mapped_tensors_equal_load_file_and_survive_release(tmp_path):
    torch.manual_seed(0)
    tensors = {"a": torch.randn(300, 70), "b": torch.randn(5).half(), "c": torch.arange(7),
               "d": torch.randn(3, 4, 5).bfloat16()}
    save_file(tensors, str(tmp_path / "w.safetensors"), metadata={"k": "v"})
    mapped = MappedSafetensors([tmp_path / "w.safetensors"])
    want = load_file(str(tmp_path / "w.safetensors"))
    assert mapped.metadata == {"k": "v"}
    for name, value in want.items():
        assert torch.equal(mapped.tensors[name], value)
    mapped.release()  # pages handed back: read from the file again on use
    assert all(torch.equal(mapped.tensors[n], v) for n, v in want.items())


@pytest.mark.parametrize("cut", [4, 40, -8])
def test_truncated_file_is_refused_by_name(tmp_path, cut):
    save_file({"a": torch.randn(64, 64)}, str(tmp_path / "w.safetensors"))
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[:cut])
    with pytest.raises(ScredgeError, match="not a readable safetensors file"):
        MappedSafetensors([tmp_path / "w.safetensors"])
