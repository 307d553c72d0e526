"""Safetensors checkpoints. Oracle: bit-identical logits after a round trip; the bad-file
errors must name the offending tensor."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from scredge.errors import ScredgeError
from scredge.ref import build_model, load_checkpoint, read_config, save_checkpoint


@pytest.mark.parametrize("tied", [True, False])
def test_round_trip(micro, tmp_path, tied):
    model = build_model(micro.with_(tie_embeddings=tied), seed=21)
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    assert read_config(path) == model.config
    loaded = load_checkpoint(path)
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(9).view(1, 9)
    assert torch.equal(model(ids, pos)[0], loaded(ids, pos)[0])
    assert not list(tmp_path.glob(".tmp-*")), "atomic save left a temporary file"


def _write(tmp_path, tensors):
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    return path


def test_missing_tensor_is_named(micro, tmp_path):
    sd = build_model(micro).state_dict()
    del sd["model.layers.1.scr.gate.bias"]
    with pytest.raises(ScredgeError, match=r"missing 1 tensor(.|\n)*layers\.1\.scr\.gate\.bias"):
        load_checkpoint(_write(tmp_path, sd), micro)


def test_extra_tensor_is_named(micro, tmp_path):
    sd = dict(build_model(micro).state_dict())
    sd["model.layers.0.self_attn.rotary.inv_freq"] = torch.zeros(4)
    with pytest.raises(ScredgeError, match=r"does not use(.|\n)*rotary\.inv_freq"):
        load_checkpoint(_write(tmp_path, sd), micro)


def test_misshaped_tensor_is_named(micro, tmp_path):
    sd = dict(build_model(micro).state_dict())
    sd["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(32, 32)
    pattern = r"'model\.layers\.0\.self_attn\.k_proj\.weight'(.|\n)*\[32, 32\](.|\n)*\[16, 32\]"
    with pytest.raises(ScredgeError, match=pattern):
        load_checkpoint(_write(tmp_path, sd), micro)


def test_config_mismatch_and_unreadable_files(micro, tmp_path):
    path = save_checkpoint(build_model(micro), tmp_path / "m.safetensors")
    with pytest.raises(ScredgeError, match="lm_head.weight"):
        load_checkpoint(path, micro.with_(tie_embeddings=False))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ScredgeError, match="not a readable safetensors file"):
        load_checkpoint(junk, micro)
    with pytest.raises(ScredgeError, match="not found"):
        load_checkpoint(tmp_path / "absent.safetensors", micro)
    bare = _write(tmp_path, build_model(micro).state_dict())
    with pytest.raises(ScredgeError, match="carries no scredge config"):
        load_checkpoint(bare)


def test_the_same_weights_give_the_same_bytes(micro, tmp_path):
    """Oracle: sha256 of the files. safetensors writes its metadata from a hash map in a
    varying order; save_checkpoint sorts it, so a folder's recorded reference sha256
    identifies the weights (six saves: an unsorted writer differs with odds 31/32)."""
    from scredge.artifact import sha256_file

    model = build_model(micro, seed=0)
    shas = {sha256_file(save_checkpoint(model, tmp_path / f"{k}.safetensors")) for k in range(6)}
    assert len(shas) == 1
    assert load_checkpoint(tmp_path / "0.safetensors").config == micro
