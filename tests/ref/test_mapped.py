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


def test_map_onto_file_keeps_the_model_and_refuses_another_file(tmp_path):
    """Oracle: the model's own logits before the mapping, and torch.equal per tensor."""
    from scredge.config import SCRConfig
    from scredge.export.pipeline import write_reference
    from scredge.ref import build_model
    from scredge.ref.mapped import map_onto_file, release_all

    c = SCRConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                  scr_layers=(1,))
    model = build_model(c, seed=1, gamma=0.3).eval()
    other = build_model(c, seed=2, gamma=0.3).eval()
    x, pos = torch.randint(0, 256, (1, 9)), torch.arange(9)[None]
    want = model(x, pos)[0]
    write_reference(other, tmp_path / "other.safetensors")
    assert not map_onto_file(model, tmp_path / "other.safetensors")  # not its values
    assert getattr(model, "mapped_weights", None) is None
    write_reference(model, tmp_path / "model.safetensors")
    assert map_onto_file(model, tmp_path / "model.safetensors")
    assert not map_onto_file(model, tmp_path / "model.safetensors")  # mapped already
    mapped = model.mapped_weights.tensors
    assert all(p.data_ptr() == mapped[k].data_ptr() for k, p in model.state_dict().items())
    release_all(model)
    assert torch.equal(model(x, pos)[0], want)
