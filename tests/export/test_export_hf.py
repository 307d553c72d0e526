"""`scredge export-hf`: a scredge checkpoint back to a transformers folder. Oracle: tiny
random transformers models (Llama with llama3 rope, Mistral with a window, Qwen2 tied with a
window) -> --from-llama -> our checkpoint -> export-hf -> AutoModelForCausalLM's logits,
against the original transformers model and our reference (SCR at gamma = 0, or off)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from hf_models import save_family

from scredge.cli import main
from scredge.contract import HF_EXPORT_RECORD, HF_README_FILE, HF_SCR_FILE, WEIGHTS_FILE
from scredge.errors import ScredgeError
from scredge.export.hf_export import export_hf
from scredge.export.sources import from_llama
from scredge.ref.checkpoint import save_checkpoint

transformers = pytest.importorskip("transformers", reason="transformers (dev extra) not installed")

IDS = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(5))
POS = torch.arange(40).expand(2, 40)


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}


def hf_logits(folder_or_model):
    model = folder_or_model
    if not isinstance(model, torch.nn.Module):
        model = transformers.AutoModelForCausalLM.from_pretrained(folder_or_model).eval()
    with torch.no_grad():
        return model(input_ids=IDS, position_ids=POS, use_cache=False).logits


def ours(model):
    with torch.no_grad():
        return model(IDS, POS)[0]


def make_run(tmp_path, family, **overrides):
    """(original transformers model, our reference, run folder with model.safetensors)."""
    hf = save_family(tmp_path / "hf", family, **overrides)
    src = from_llama(tmp_path / "hf", seed=2)
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(src.model, run / WEIGHTS_FILE)
    return hf, src.model, run


@pytest.mark.parametrize(("family", "overrides", "arch"), [
    ("llama", {"rope_scaling": dict(LLAMA3)}, "LlamaForCausalLM"),
    ("mistral", {"sliding_window": 6}, "MistralForCausalLM"),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 0,
               "tie_word_embeddings": True}, "Qwen2ForCausalLM"),
], ids=["llama3-rope", "mistral-window", "qwen2-tied-window"])
def test_round_trip_gives_the_original_logits(tmp_path, family, overrides, arch):
    """Oracle: the original transformers model's logits (1e-5), and our reference with SCR
    at gamma = 0 (an identity), both equal to the exported folder's under transformers."""
    hf, model, run = make_run(tmp_path, family, **overrides)
    result = export_hf(run, tmp_path / "out")
    assert result.architecture == arch and not result.scr_active
    got = hf_logits(tmp_path / "out")
    torch.testing.assert_close(got, hf_logits(hf), rtol=0, atol=1e-5)
    torch.testing.assert_close(got, ours(model), rtol=0, atol=1e-5)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == [arch]


def test_trained_scr_goes_beside_and_comes_back(tmp_path, capsys):
    """Oracle: with gamma != 0 transformers runs the base, i.e. our model with SCR off
    (gamma = 0); the SCR file brings the SCR model back through --from-llama (our logits
    exactly); the CLI and README say SCR is not in the transformers model."""
    _, model, run = make_run(tmp_path, "llama")
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for name, p in model.named_parameters():
            if ".scr." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    save_checkpoint(model, run / WEIGHTS_FILE)
    out = tmp_path / "out"
    assert main(["export-hf", str(run), str(out)]) == 0
    said = capsys.readouterr().out
    assert "WITHOUT them" in said and HF_SCR_FILE in said
    assert "without SCR" in (out / HF_README_FILE).read_text()
    got = hf_logits(out)
    with_scr = ours(model)
    with torch.no_grad():
        for block in model.model.layers:
            block.scr.scale.zero_()
    torch.testing.assert_close(got, ours(model), rtol=0, atol=1e-5)
    assert (got - with_scr).abs().max() > 1e-2  # SCR did change the logits
    with torch.no_grad():  # back to the trained gamma through the SCR file
        back = from_llama(out).model
    torch.testing.assert_close(ours(back), with_scr, rtol=0, atol=0)
    with pytest.raises(ScredgeError, match=re.escape("--scr-layers differs")):
        from_llama(out, scr_layers=(0,))


def test_tokenizer_files_and_bfloat16(tmp_path, bpe_tokenizer):
    """A run carrying tokenizer files (as an artifact does): copied, eos ids in the configs,
    AutoTokenizer loads the folder; --dtype bfloat16 stores bfloat16 weights. Oracle:
    transformers' own loaders."""
    from hf_models import build_model, save_tokenizer

    hf_dir = tmp_path / "hf"
    eos = bpe_tokenizer.token_to_id("<|im_end|>")
    build_model("llama", 2048, eos_ids=[eos]).save_pretrained(hf_dir)
    save_tokenizer(hf_dir, bpe_tokenizer)
    src = from_llama(hf_dir)
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(src.model, run / WEIGHTS_FILE)
    src.tokenizer.copy_into(run)
    result = export_hf(run, tmp_path / "out", dtype="bfloat16")
    assert "tokenizer.json" in result.files and "generation_config.json" in result.files
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tok("the key").input_ids == bpe_tokenizer.encode("the key").ids
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert loaded.generation_config.eos_token_id in (eos, [eos])
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16


def test_out_folder_rules(tmp_path, capsys):
    """Oracle: the folder rules. A foreign non-empty folder is refused and left as it was;
    an earlier export needs --force and is replaced; one holding a file of the user's is
    refused, and so is one whose file was edited; an empty folder is taken; a Hugging Face
    folder as RUN is refused."""
    _, _, run = make_run(tmp_path, "mistral", sliding_window=6)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ScredgeError, match="non-empty folder that export-hf did not write"):
        export_hf(run, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    first = export_hf(run, tmp_path / "empty")
    record = json.loads((tmp_path / "empty" / HF_EXPORT_RECORD).read_text())
    assert sorted([*record["files"], HF_EXPORT_RECORD]) == sorted(first.files)
    with pytest.raises(ScredgeError, match="pass --force"):
        export_hf(run, tmp_path / "empty")
    export_hf(run, tmp_path / "empty", force=True)
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == sorted(first.files)
    assert not list(tmp_path.glob(".empty*"))  # no partial or old folder left behind
    (tmp_path / "empty" / HF_README_FILE).write_text("my notes")
    with pytest.raises(ScredgeError, match="changed since export-hf wrote them"):
        export_hf(run, tmp_path / "empty", force=True)
    assert (tmp_path / "empty" / HF_README_FILE).read_text() == "my notes"
    (tmp_path / "empty" / "mine.txt").write_text("keep")
    with pytest.raises(ScredgeError, match="did not write"):
        export_hf(run, tmp_path / "empty", force=True)
    assert (tmp_path / "empty" / "mine.txt").read_text() == "keep"
    assert main(["export-hf", str(tmp_path / "hf"), str(tmp_path / "x")]) == 2
    assert "already a Hugging Face folder" in capsys.readouterr().err
    assert main(["export-hf", str(run), str(tmp_path / "y"), "--dtype", "int8"]) == 2
    assert "unknown export-hf dtype" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_an_artifact_is_read_through_its_manifest(small_window_artifact, tmp_path):
    """Issue 30 class 6: export-hf copied a chat template symlinked from outside the
    artifact. Oracle: a listed file replaced by a link to an outside file is refused
    (never copied); the untouched artifact exports and its weights round-trip."""
    import os

    from artifact_tools import copy_artifact


    art = copy_artifact(small_window_artifact[1], tmp_path / "art")
    export_hf(art, tmp_path / "ok")
    assert (tmp_path / "ok" / "model.safetensors").is_file()
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((art / "model.safetensors").read_bytes())
    os.remove(art / "model.safetensors")
    os.symlink(outside, art / "model.safetensors")
    with pytest.raises(ScredgeError, match="outside"):
        export_hf(art, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
