"""`scredge train --init`: SCR trained into a pretrained model (tiny transformers Llama folders
with a real BPE tokenizer, and scredge's own plain checkpoints). Oracles: the source
folder's own safetensors (frozen base tensors bit for bit), transformers' loss on the same
validation windows (step 0 is the source model), the source run's own final validation loss,
an uninterrupted run's bytes (resume), the tokenizers library's encoding of the data, and
refusals that write nothing."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scredge.cli import main
from scredge.errors import ScredgeError

transformers = pytest.importorskip("transformers", reason="transformers (dev extra) not installed")
safetensors_torch = pytest.importorskip("safetensors.torch")

STEPS = ["--steps", "6", "--batch-size", "2", "--seq-len", "24", "--eval-batches", "1",
         "--eval-every", "3", "--log-every", "3", "--lr", "1e-2", "--warmup-steps", "1"]
TEXT = ["--corpus", "longrange", "--docs", "12", "--doc-bytes", "600",
        "--recall-gap", "100,200", "--val-fraction", "0.25"]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, bpe_tokenizer):
    """A tiny random Llama (2 layers, vocab of the BPE) with its tokenizer, save_pretrained."""
    import hf_models

    folder = tmp_path_factory.mktemp("hf_llama")
    eos = bpe_tokenizer.token_to_id(hf_models.EOS)
    model = hf_models.build_model("llama", bpe_tokenizer.get_vocab_size(), seed=2,
                                  eos_ids=[eos])
    model.save_pretrained(folder, safe_serialization=True)
    hf_models.save_tokenizer(folder, bpe_tokenizer)
    return folder


@pytest.fixture(scope="module")
def retrofit_run(hf_folder, tmp_path_factory):
    """`scredge train --init HF --trainable scr` for 6 steps (written once per module)."""
    out = tmp_path_factory.mktemp("runs") / "retrofit"
    assert main(["train", "--init", str(hf_folder), "--trainable", "scr", *STEPS, *TEXT,
                 "--out", str(out)]) == 0
    return out


def train_main(argv):
    """`scredge train ARGV` with its ScredgeError raised, not printed (main prints it)."""
    from scredge.cli import build_parser

    args = build_parser().parse_args(["train", *argv])
    args.argv = ["train", *argv]
    return args.func(args)


def _tensors(path):
    return safetensors_torch.load_file(str(path))


def test_frozen_base_is_bit_identical_and_scr_trained(hf_folder, retrofit_run):
    """Oracle: the Hugging Face folder's own safetensors. Every base tensor of the run's
    model.safetensors equals it bit for bit; the SCR scales moved off 0; the optimizer kept
    state for the SCR parameters only."""
    source = _tensors(hf_folder / "model.safetensors")
    saved = _tensors(retrofit_run / "model.safetensors")
    base = [k for k in saved if ".scr." not in k]
    assert sorted(base) == sorted(k for k in source if not k.endswith("inv_freq"))
    for k in base:
        assert saved[k].dtype == torch.float32 and torch.equal(saved[k], source[k]), k
    scales = [saved[k] for k in saved if k.endswith("scr.scale")]
    assert len(scales) == 2 and all(s.abs().max() > 0 for s in scales)
    state = torch.load(retrofit_run / "last.pt", weights_only=True)
    n_scr = sum(".scr." in k for k in saved)
    assert len(state["optimizer"]["state"]) == n_scr == 14
    log = json.loads((retrofit_run / "train_log.json").read_text())
    assert log["trainable"] == "scr" and log["init"]["kind"] == "huggingface"
    assert log["trained_parameters"] == sum(saved[k].numel() for k in saved if ".scr." in k)


def test_step_zero_is_the_source_model(hf_folder, retrofit_run):
    """Oracle: transformers' cross-entropy on the run's validation windows (the data encoded
    by the tokenizers library from the folder's tokenizer.json) equals the logged step-0
    validation loss: SCR at gamma = 0 leaves the model as it was."""
    from tokenizers import Tokenizer

    from scredge.ref.corpus import training_data
    from scredge.ref.train import val_windows

    log = json.loads((retrofit_run / "train_log.json").read_text())
    _, val_bytes, _ = training_data(corpus="longrange", docs=12, doc_bytes=600,
                                    recall_gap="100,200", val_fraction=0.25)
    tok = Tokenizer.from_file(str(hf_folder / "tokenizer.json"))
    ids = torch.tensor(tok.encode(val_bytes.decode(), add_special_tokens=False).ids)
    assert log["data"]["units"] == "tokens" and log["data"]["val_bytes"] == len(ids)
    windows = val_windows(ids.numpy(), 2, 24)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_folder).eval()
    with torch.no_grad():
        logits = model(windows[:, :-1]).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1).double(),
                                                 windows[:, 1:].flatten()).item()
    assert log["evals"][0]["step"] == 0
    assert math.isclose(log["evals"][0]["val_loss"], expected, rel_tol=1e-5)


def test_run_keeps_the_tokenizer_for_export(hf_folder, retrofit_run):
    """Oracle: the source folder's tokenizer files, byte for byte, in the run folder, and the
    eos ids export --from-llama resolves from the source folder, in what `export --from-run`
    and `export --weights RUN/model.safetensors` hand to the artifact writer."""
    from scredge.export.sources import select_source
    from scredge.ref.hf_import import hf_config_and_tokenizer

    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (retrofit_run / name).read_bytes() == (hf_folder / name).read_bytes()
    _, _, expected = hf_config_and_tokenizer(hf_folder, None)
    for src in (select_source(run=retrofit_run),
                select_source(weights=retrofit_run / "model.safetensors")):
        assert src.tokenizer.folder == retrofit_run
        assert src.tokenizer.files == expected.files
        assert src.tokenizer.eos_token_ids == expected.eos_token_ids != ()
        assert src.tokenizer.vocab_size == expected.vocab_size


def test_resume_is_bit_exact(hf_folder, retrofit_run, tmp_path):
    """Oracle: the uninterrupted run's model.safetensors, every tensor bit for bit (the
    file's bytes may differ: safetensors writes its metadata keys in any order)."""
    out = tmp_path / "resumed"
    common = ["train", "--init", str(hf_folder), "--trainable", "scr", *STEPS, *TEXT,
              "--out", str(out)]
    assert main([*common, "--stop-at", "2"]) == 0
    assert not (out / "model.safetensors").exists()
    assert main([*common, "--resume"]) == 0
    a, b = _tensors(out / "model.safetensors"), _tensors(retrofit_run / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_other_init_or_trainable_is_refused(hf_folder, retrofit_run, tmp_path):
    """Oracle: the refusal names the differing flag; the run folder is unchanged."""
    before = {p.name: p.read_bytes() for p in retrofit_run.iterdir()}
    with pytest.raises(ScredgeError, match="--trainable differs"):
        train_main(["--init", str(hf_folder), "--trainable", "all", *STEPS, *TEXT,
                    "--out", str(retrofit_run), "--resume"])
    other = tmp_path / "copy"
    other.mkdir()
    for p in hf_folder.iterdir():
        (other / p.name).write_bytes(p.read_bytes())
    with pytest.raises(ScredgeError, match="--init differs"):
        train_main(["--init", str(other), "--trainable", "scr", *STEPS, *TEXT,
                    "--out", str(retrofit_run), "--resume"])
    assert {p.name: p.read_bytes() for p in retrofit_run.iterdir()} == before


def test_retrofit_a_plain_scredge_run(micro, tmp_path):
    """Oracle: the plain run's own final validation loss (same bytes, same windows) is the
    retrofit's step-0 loss; its base tensors stay bit for bit."""
    plain = tmp_path / "plain"
    (tmp_path / "micro.json").write_text(json.dumps({"model": micro.to_dict()}))
    assert main(["train", "--config", str(tmp_path / "micro.json"), "--scr-layers", "none",
                 "--window", "16",
                 *STEPS, *TEXT, "--out", str(plain)]) == 0
    scr = tmp_path / "scr"
    assert main(["train", "--init", str(plain), "--scr-layers", "all", "--trainable", "scr",
                 *STEPS, *TEXT, "--out", str(scr)]) == 0
    a = json.loads((plain / "train_log.json").read_text())
    b = json.loads((scr / "train_log.json").read_text())
    assert b["evals"][0]["val_loss"] == a["final_val_loss"]
    assert b["data"]["units"] == "bytes" and b["tokenizer"] is None
    src, out = _tensors(plain / "model.safetensors"), _tensors(scr / "model.safetensors")
    assert all(torch.equal(src[k], out[k]) for k in src)
    assert any(".scr." in k for k in out) and not any(".scr." in k for k in src)


def _refused(args, out, needle):
    with pytest.raises(ScredgeError, match=needle):
        train_main([*args, *STEPS, *TEXT, "--out", str(out)])
    assert not out.exists()


def test_bad_init_sources_are_refused(hf_folder, tmp_path):
    """Oracle: each refusal's message; --out is never created."""
    out = tmp_path / "out"
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("hello")
    _refused(["--init", str(stray)], out, "neither a Hugging Face folder")
    _refused(["--init", str(hf_folder), "--scr-layers", "none", "--trainable", "scr"], out,
             "would train nothing")
    _refused(["--trainable", "scr"], out, "needs --init")
    _refused(["--init", str(hf_folder), "--preset", "tiny"], out,
             "--preset/--config disagrees")
    _refused(["--init", str(hf_folder), "--window", "8"], out, "--window disagrees")
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((hf_folder / name).read_bytes())
    _refused(["--init", str(bare)], out, "no tokenizer")


def test_memory_estimate_counts_grads_and_adam_of_trained_parameters_only(micro):
    """Oracle: the estimate's own definition written out: 4 bytes per parameter for the
    weights, 12 more (grad, exp_avg, exp_avg_sq) per trained one; activations unchanged."""
    from scredge.ref.train import TrainConfig, estimate_memory

    cfg = TrainConfig(batch_size=2, seq_len=16)
    shapes = micro.parameter_shapes()
    n = sum(math.prod(s) for s in shapes.values())
    n_scr = sum(math.prod(s) for k, s in shapes.items() if ".scr." in k)
    full, scr = estimate_memory(micro, cfg), estimate_memory(micro, cfg, "scr")
    assert full["weights_grads_adam"] == 16 * n and full["trained_parameters"] == n
    assert scr["weights_grads_adam"] == 4 * n + 12 * n_scr and scr["trained_parameters"] == n_scr
    assert scr["activations"] == full["activations"]
