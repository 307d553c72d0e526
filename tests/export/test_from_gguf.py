"""`scredge export --from-gguf`: GGUF files written here with the gguf package's GGUFWriter
(tests/gguf_files.py). Oracles: transformers' own GGUF loader
(`from_pretrained(..., gguf_file=...)`, with its own q/k unpermutation and dequantization)
for the weights and logits; the values the file holds (dequantized by gguf.quants) for the
weights, bit for bit; the original BPE tokenizer for the tokenizer rebuilt from the file's
metadata; the exported graph run by onnxruntime against transformers; and the refusals'
messages for what is not a Llama-family GGUF of the supported types."""

from __future__ import annotations

import numpy as np
import pytest

from scredge.cli import main
from scredge.errors import ScredgeError

gguf = pytest.importorskip("gguf", reason="gguf (export extra) not installed")
transformers = pytest.importorskip("transformers", reason="transformers (dev extra) not installed")
torch = pytest.importorskip("torch")

# F32 norms; every other accepted type at least once (Q4_K / Q6_K on the rows of 256)
TYPES = {"token_embd.weight": "F16", "output.weight": "Q8_0",
         "blk.0.attn_q.weight": "Q8_0", "blk.0.attn_k.weight": "Q4_0",
         "blk.0.attn_v.weight": "Q4_1", "blk.1.attn_q.weight": "Q4_0",
         "blk.1.ffn_up.weight": "Q8_0", "blk.0.ffn_down.weight": "Q4_K",
         "blk.1.ffn_down.weight": "Q6_K"}


@pytest.fixture(scope="module")
def llama_gguf(bpe_tokenizer, tmp_path_factory):
    """(folder, file name, the float32 values it holds by transformers name, tokenizer): a
    random 2-layer llama (d_ff 256, so K-quant rows fit) with the session's BPE tokenizer
    and the ChatML template."""
    pytest.importorskip("accelerate", reason="transformers' GGUF loader needs accelerate")
    from gguf_files import write_gguf
    from hf_models import BOS, CHAT_TEMPLATE, EOS

    config = transformers.LlamaConfig(
        vocab_size=2048, hidden_size=32, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rope_theta=1000.0, initializer_range=0.1, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("gguf")
    held = write_gguf(folder / "llama.gguf", model, "llama", TYPES, bpe_tokenizer,
                      CHAT_TEMPLATE, BOS, EOS)
    return folder, "llama.gguf", held, bpe_tokenizer


def test_weights_are_the_files_and_logits_transformers(llama_gguf):
    from scredge.export.gguf_import import load_gguf

    folder, name, held, _ = llama_gguf
    src = load_gguf(folder / name, scr_layers=())
    state = src.model.state_dict()
    assert {k: state[k].numpy() for k in held}.keys() == held.keys()
    for k, v in held.items():
        np.testing.assert_array_equal(state[k].numpy(), v, err_msg=k)
    assert src.description["tensor_types"] == {"F32": 12, "F16": 1, "Q8_0": 3, "Q4_0": 2,
                                               "Q4_1": 1, "Q4_K": 1, "Q6_K": 1}
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name).eval()
    ids = torch.tensor([[5, 100, 7, 1000, 3, 2047, 12]])
    with torch.no_grad():
        want = hf(ids).logits
        got, _ = src.model(ids, torch.arange(ids.shape[1])[None], None)
    assert float((want - got).abs().max()) < 1e-4


def test_tokenizer_and_template_come_from_the_file(llama_gguf):
    from hf_models import CHAT_TEMPLATE, EOS
    from tokenizers import Tokenizer

    from scredge.export.gguf_import import load_gguf

    folder, name, _, bpe = llama_gguf
    tok = load_gguf(folder / name, scr_layers=()).tokenizer
    assert tok.eos_token_ids == (bpe.token_to_id(EOS),)
    rebuilt = Tokenizer.from_file(str(tok.folder / "tokenizer.json"))
    text = "The import statement combines two operations; café, naïve — 42."
    assert (rebuilt.encode(text, add_special_tokens=False).ids
            == bpe.encode(text, add_special_tokens=False).ids)
    assert (tok.folder / "chat_template.jinja").read_text() == CHAT_TEMPLATE


def test_cli_export_runs_like_transformers(llama_gguf, tmp_path, ort_decoder):
    """The exported graph (SCR on every layer at gamma 0) gives transformers' logits, and
    the folder carries the file's tokenizer and chat template."""
    from scredge.runtime import Engine

    folder, name, _, _ = llama_gguf
    out = tmp_path / "art"
    assert main(["export", "--from-gguf", str(folder / name), "--out", str(out)]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name).eval()
    ids = np.array([[5, 100, 7, 1000, 3, 2047, 12]], dtype=np.int64)
    with torch.no_grad():
        want = hf(torch.from_numpy(ids)).logits.numpy()
    engine = Engine.load(out, device="cpu")
    state = engine.runner.decoder(1)
    got = state.step(ids, np.arange(ids.shape[1], dtype=np.int64)[None])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert engine.render_chat([{"role": "user", "content": "hi"}]).endswith(
        "<|im_start|>assistant\n")


def _truncated(src, dst, keep: int):
    dst.write_bytes(src.read_bytes()[:keep])
    return dst


@pytest.mark.parametrize("case", ["half", "header", "magic", "empty"])
def test_truncated_or_corrupt_gguf_is_refused(llama_gguf, tmp_path, case, capsys):
    folder, name, _, _ = llama_gguf
    data = (folder / name).read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes({"half": data[:len(data) // 2], "header": data[:200],
                     "magic": b"GGUX" + data[4:], "empty": b""}[case])
    out = tmp_path / "out"
    assert main(["export", "--from-gguf", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "GGUF" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_other_architecture_is_refused_by_name(tmp_path, capsys):
    from gguf_files import write_other_architecture

    write_other_architecture(tmp_path / "gpt2.gguf")
    assert main(["export", "--from-gguf", str(tmp_path / "gpt2.gguf"),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "unsupported GGUF architecture" in err and "'gpt2'" in err
    assert not (tmp_path / "out").exists()


def test_unsupported_tensor_type_is_refused_by_name(tmp_path):
    from scredge.export.gguf_import import check_tensor_types, open_gguf

    w = gguf.GGUFWriter(str(tmp_path / "q5.gguf"), "llama")
    w.add_tensor("blk.0.ffn_up.weight", gguf.quants.quantize(
        np.ones((2, 32), np.float32), gguf.GGMLQuantizationType.Q5_0),
        raw_dtype=gguf.GGMLQuantizationType.Q5_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ScredgeError, match="blk.0.ffn_up.weight: Q5_0"):
        check_tensor_types(open_gguf(tmp_path / "q5.gguf"), tmp_path / "q5.gguf")


def test_truncated_safetensors_is_refused(tmp_path, capsys):
    """The --from-llama counterpart: a Hugging Face folder whose safetensors file was cut
    short is a ScredgeError, not a traceback, and nothing is written."""
    from hf_models import save_family

    folder = tmp_path / "hf"
    save_family(folder, "llama")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    out = tmp_path / "out"
    assert main(["export", "--from-llama", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "safetensors" in err and "Traceback" not in err
    assert not out.exists()
