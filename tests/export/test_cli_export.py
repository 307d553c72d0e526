"""`scredge export` from the command line. Oracles: the folder passes its own manifest check
and loads back; every refusal exits 2 with the project's message and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scredge.artifact import read_config, verify_manifest
from scredge.cli import main
from scredge.config import SCRConfig

MICRO = SCRConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                  window=8, scr_layers=(0, 1))


@pytest.fixture
def micro_config(tmp_path):
    path = tmp_path / "micro.json"
    path.write_text(MICRO.to_json())
    return path


def test_export_config_float16(tmp_path, micro_config, capsys):
    out = tmp_path / "art16"
    argv = ["export", "--config", str(micro_config), "--dtype", "float16", "--scr-layers", "1",
            "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "prefill:" in printed and "PASS" in printed and f"wrote {out}" in printed
    verify_manifest(out)
    config, raw = read_config(out)
    assert config == MICRO.with_(scr_layers=(1,)) and raw["export"]["dtype"] == "float16"
    # float16 too: the shared form by default, verified at the float16 logits tier (above)
    assert raw["graph_version"] == 3 and raw["cache"] == {"ort": "shared", "trt": "concat"}


def test_export_default_cache_per_target(tmp_path, micro_config):
    """No --cache: --target ort writes the shared form; --target trt the concat form only
    (TensorRT's), never refused for the default; --cache concat still writes concat."""
    base = ["export", "--config", str(micro_config)]
    for target, cache, want in (("ort", [], {"ort": "shared"}), ("trt", [], None),
                                ("ort", ["--cache", "concat"], None)):
        out = tmp_path / f"{target}{len(cache)}"
        assert main([*base, "--target", target, *cache, "--out", str(out)]) == 0
        raw = json.loads((out / "config.json").read_text())
        assert raw.get("cache") == want and raw["graph_version"] == (3 if want else 2)
        assert sorted(p.name for p in out.glob("*.onnx")) == ["model.onnx"]


def test_export_weights_with_checkpoint_config(tmp_path, micro_config):
    weights = tmp_path / "w.safetensors"
    assert main(["init", "--config", str(micro_config), "--seed", "4", "--out", str(weights)]) == 0
    assert main(["export", "--weights", str(weights), "--out", str(tmp_path / "a")]) == 0
    source = json.loads((tmp_path / "a" / "config.json").read_text())["export"]["source"]
    assert source == {"kind": "checkpoint", "weights": str(weights), "config": "metadata"}


@pytest.mark.slow
def test_scr_layers_all_means_every_layer_for_every_source(tmp_path, capsys):
    """'all' is every layer, as in `scredge train`, not "keep the config's": a config with
    SCR in layer 1 only, exported with --scr-layers all, has SCR in both layers; a
    checkpoint whose SCR layers are fixed is refused for it, and absent keeps them."""
    partial = tmp_path / "partial.json"
    partial.write_text(MICRO.with_(scr_layers=(1,)).to_json())
    assert main(["export", "--config", str(partial), "--scr-layers", "all",
                 "--out", str(tmp_path / "all")]) == 0
    assert read_config(tmp_path / "all")[0].scr_layers == (0, 1)
    assert main(["export", "--config", str(partial), "--out", str(tmp_path / "kept")]) == 0
    assert read_config(tmp_path / "kept")[0].scr_layers == (1,)
    weights = tmp_path / "w.safetensors"
    assert main(["init", "--config", str(partial), "--out", str(weights)]) == 0
    capsys.readouterr()
    assert main(["export", "--weights", str(weights), "--scr-layers", "all",
                 "--out", str(tmp_path / "w")]) == 2
    assert "differs from the checkpoint's SCR layers" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(("extra", "needle"), [
    (["--dtype", "int8"], "unknown export dtype"),
    (["--opset", "13"], "unsupported ONNX opset"),
    (["--preset", "huge"], "unknown preset"),
    (["--scr-layers", "0,x"], "invalid --scr-layers"),
    (["--scr-layers", "0,7"], "scr_layers"),
    (["--target", "trt", "--cache", "shared"], "an onnxruntime graph form"),
])
def test_refusals_write_nothing(tmp_path, extra, needle, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--out", "art", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scredge export: error:") and needle in err
    assert list(tmp_path.iterdir()) == []


def test_bad_checkpoint_writes_nothing(tmp_path, micro_config, capsys):
    from safetensors.torch import save_file

    from scredge.ref import build_model

    sd = dict(build_model(MICRO).state_dict())
    sd["model.layers.0.mlp.up_proj.weight"] = sd["model.layers.0.mlp.up_proj.weight"][:10]
    save_file(sd, str(tmp_path / "bad.safetensors"))
    out = tmp_path / "art"
    assert main(["export", "--config", str(micro_config), "--weights",
                 str(tmp_path / "bad.safetensors"), "--out", str(out)]) == 2
    assert "'model.layers.0.mlp.up_proj.weight' has the wrong shape" in capsys.readouterr().err
    assert not out.exists()
    (tmp_path / "existing").mkdir()
    assert main(["export", "--config", str(micro_config), "--out",
                 str(tmp_path / "existing")]) == 2
    assert "--force" in capsys.readouterr().err


@pytest.mark.parametrize("source", [{"pretrained": "tiny"}, {"run": Path("runs/x")}])
def test_sources_with_their_own_config_name_the_options_they_refuse(source):
    """Oracle: the options given. A shipped checkpoint or a run fixes its own config, so
    each extra option is named in the refusal, before anything is loaded."""
    from scredge.errors import ScredgeError
    from scredge.export.sources import select_source

    with pytest.raises(ScredgeError) as err:
        select_source(**source, scr_layers="all", weights=Path("w.safetensors"))
    assert err.value.received.endswith("with --weights, --scr-layers")


def test_int8_activations_reach_every_matmulnbits(tmp_path, micro_config):
    """--activations int8 on the default int4 grid (float zero points, float32 activations
    by default): every MatMulNBits of the onnxruntime graph at accuracy_level 4, the
    config says so, and the artifact passed the quantized tier (the export refuses
    otherwise). Oracle: the graph's attributes as onnxruntime reads them."""
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "i8"
    assert main(["export", "--config", str(micro_config), "--quantize", "int4",
                 "--activations", "int8", "--target", "ort", "--out", str(out)]) == 0
    verify_manifest(out)
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    levels = [a.i for n in graph.node if n.op_type == "MatMulNBits"
              for a in n.attribute if a.name == "accuracy_level"]
    assert levels and set(levels) == {4}
    assert json.loads((out / "config.json").read_text())["quantization"]["activations"] == "int8"
