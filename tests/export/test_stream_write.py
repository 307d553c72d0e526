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


def _stamped_tiny():
    """A stamped 5-layer tiny graph (plain: every large weight has a guess) and its model."""
    from scredge.config import SCRConfig
    from scredge.export.stamp import stamp_graph
    from scredge.export.stream_write import dedup_small
    from scredge.ref import build_model

    c = SCRConfig.preset("tiny").with_(n_layers=5, scr_layers=())
    model = build_model(c, seed=2)
    stamped = stamp_graph(c, "float32", 18)
    dedup_small(stamped, model.state_dict())
    return model, stamped


def _copy(stamped):
    import onnx

    from scredge.export.stamp import StampedGraph

    proto = onnx.ModelProto()
    proto.CopyFrom(stamped.proto)
    return StampedGraph(proto, dict(stamped.recipes))


def _values(folder) -> dict:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    return {i.name: numpy_helper.to_array(i, base_dir=str(folder))
            for i in proto.graph.initializer}


def test_weights_written_ahead_are_the_graphs(tmp_path):
    """The weights written before the graph is known (write_ahead), the graph then pointed
    at them, against write_onnx alone (the oracle): every initializer's value by name, no
    bytes but the tensors and their alignment, the hash as written; a wrong guess is
    discarded and the file written exactly as without one (the same sha256)."""
    import numpy as np

    from scredge.export.stamp import Recipe
    from scredge.export.stream_write import ALIGN, _key, write_ahead, write_onnx

    model, stamped = _stamped_tiny()
    params = model.state_dict()
    for name in ("plain", "ahead", "wrong"):
        (tmp_path / name).mkdir()
    plain = write_onnx(_copy(stamped), params, tmp_path / "plain" / "m.onnx", "m.onnx.data")
    ahead = write_ahead(model, "float32", tmp_path / "ahead" / "m.onnx.data")
    assert ahead.placed and set(ahead.placed) <= {_key(r) for r in stamped.recipes.values()}
    got = write_onnx(_copy(stamped), params, tmp_path / "ahead" / "m.onnx", "m.onnx.data",
                     ahead=ahead)
    data = tmp_path / "ahead" / "m.onnx.data"
    assert got == {"sha256": sha256_file(data), "bytes": data.stat().st_size}
    want, have = _values(tmp_path / "plain"), _values(tmp_path / "ahead")
    assert want.keys() == have.keys()
    for name, value in want.items():
        np.testing.assert_array_equal(have[name], value, err_msg=name)
    external = [want[name] for name in stamped.recipes]  # the weights, not the constants
    assert got["bytes"] < sum(v.nbytes for v in external) + ALIGN * len(external)
    wrong = write_ahead(model, "float32", tmp_path / "wrong" / "m.onnx.data")
    wrong.put(Recipe("model.layers.0.mlp.up_proj.weight", "id", np.dtype(np.float32)),
              params, lambda name: None)  # the graph reads it transposed only
    assert write_onnx(_copy(stamped), params, tmp_path / "wrong" / "m.onnx", "m.onnx.data",
                      ahead=wrong) == plain
