"""Byte-level training. Oracles: ln(256), the loss of a uniform guess, for an untrained model;
an uninterrupted run's own weights for a resumed run (bit for bit); the schedule's
formula written out by hand; refusals carry the project's message and write nothing."""

from __future__ import annotations

import json
import math

import pytest
import torch

import scredge.ref.train as train_mod
from scredge.cli import main
from scredge.errors import ScredgeError
from scredge.ref import load_checkpoint
from scredge.ref.corpus import prose_corpus, split
from scredge.ref.model import build_model
from scredge.ref.train import TrainConfig, check_memory, estimate_memory, make_optimizer, train

FAST = dict(batch_size=4, seq_len=32, eval_batches=2, log_every=2, warmup_steps=2)


@pytest.fixture(scope="module")
def data() -> tuple[bytes, bytes]:
    return split(prose_corpus()[:60_000], 0.1)


@pytest.mark.slow
def test_a_few_steps_lower_the_loss(micro, data, tmp_path):
    """Oracle: the untrained model is near a uniform guess, ln 256 = 5.55 nats per byte;
    40 steps on English prose take the validation loss down by more than 1 nat."""
    lines = []
    cfg = TrainConfig(steps=40, lr=3e-3, min_lr=3e-4, eval_every=20, **FAST)
    result = train(micro, cfg, *data, tmp_path, progress=lines.append)
    evals = [e["val_loss"] for e in result.log["evals"]]
    assert abs(evals[0] - math.log(256)) < 0.3
    assert evals[-1] < evals[0] - 1.0 and result.log["final_val_loss"] == evals[-1]
    assert [e["step"] for e in result.log["evals"]] == [0, 20, 40]
    assert any("tok/s" in line and "eta" in line for line in lines)
    logged = json.loads((tmp_path / "train_log.json").read_text())
    assert logged["status"] == "finished" and logged["final_val_loss"] == evals[-1]
    loaded = load_checkpoint(tmp_path / "model.safetensors")
    assert loaded.config == micro
    for name, p in result.model.state_dict().items():
        assert torch.equal(p, loaded.state_dict()[name]), name


def test_resumed_run_ends_with_the_uninterrupted_weights(micro, data, tmp_path):
    """Oracle: the uninterrupted run. Stopping after step 3 and resuming reaches the same
    final weights and validation losses, bit for bit (CPU, same threads)."""
    cfg = TrainConfig(steps=7, lr=3e-3, eval_every=3, checkpoint_every=100, **FAST)
    whole = train(micro, cfg, *data, tmp_path / "whole")
    part = train(micro, cfg, *data, tmp_path / "part", stop_at=3)
    assert not part.finished and not (tmp_path / "part" / "model.safetensors").exists()
    assert json.loads((tmp_path / "part" / "train_log.json").read_text())["status"] == "stopped"
    resumed = train(micro, cfg, *data, tmp_path / "part", resume=True)
    a = whole.model.state_dict()
    for name, p in resumed.model.state_dict().items():
        assert torch.equal(p, a[name]), name
    assert [e["val_loss"] for e in resumed.log["evals"]] == [
        e["val_loss"] for e in whole.log["evals"]]
    assert [r["start_step"] for r in resumed.log["runs"]] == [0, 3]


def test_resume_refusals(micro, data, tmp_path):
    """Oracle: the project's messages, naming both configs or both settings."""
    cfg = TrainConfig(steps=4, **FAST)
    train(micro, cfg, *data, tmp_path, stop_at=1)
    with pytest.raises(ScredgeError, match=r"another model config(.|\n)*window=8(.|\n)*window=4"):
        train(micro.with_(window=4), cfg, *data, tmp_path, resume=True)
    with pytest.raises(ScredgeError, match=r"settings differ(.|\n)*lr=0.001(.|\n)*lr=0.002"):
        train(micro, TrainConfig(steps=4, lr=2e-3, **FAST), *data, tmp_path, resume=True)
    with pytest.raises(ScredgeError, match="data differs"):
        train(micro, cfg, data[0][1:], data[1], tmp_path, resume=True)
    with pytest.raises(ScredgeError, match="already holds a training run"):
        train(micro, cfg, *data, tmp_path)
    with pytest.raises(ScredgeError, match="nothing to resume"):
        train(micro, cfg, *data, tmp_path / "empty", resume=True)


def test_memory_check_refuses_before_allocating(micro, data, tmp_path, monkeypatch):
    """Oracle: a fake 1 MB of available memory is refused with the fix; nothing is written.
    The estimate grows faster than linearly in seq_len (attention scores are T x T)."""
    cfg = TrainConfig(steps=4, **FAST)
    with pytest.raises(ScredgeError, match=r"more memory(.|\n)*--batch-size"):
        check_memory(micro, cfg, available=1 << 20)
    assert check_memory(micro, cfg, available=None)["total"] > 0
    monkeypatch.setattr(train_mod, "available_memory", lambda device="cpu": 1 << 20)
    with pytest.raises(ScredgeError, match="more memory"):
        train(micro, cfg, *data, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    train(micro, cfg, *data, tmp_path / "run", ignore_memory_check=True)
    short = estimate_memory(micro, TrainConfig(seq_len=256))["activations"]
    long = estimate_memory(micro, TrainConfig(seq_len=1024))["activations"]
    assert long > 4.5 * short


@pytest.mark.parametrize(
    ("field", "value"),
    [("steps", 0), ("batch_size", -1), ("seq_len", 1), ("lr", 0.0), ("min_lr", 1.0),
     ("warmup_steps", 2000), ("grad_clip", -1.0), ("lr", float("nan")), ("seed", 1.5)],
)
def test_train_config_refuses_bad_values(field, value):
    """Oracle: the message names the field and the flag to fix."""
    with pytest.raises(ScredgeError, match=f"'{field}'(.|\n)*--{field.replace('_', '-')}"):
        TrainConfig(**{field: value})


def test_lr_schedule():
    """Oracle: linear warmup to lr, then cosine to min_lr, written out by hand."""
    cfg = TrainConfig(steps=110, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    assert cfg.lr_at(0) == pytest.approx(1e-4) and cfg.lr_at(9) == pytest.approx(1e-3)
    assert cfg.lr_at(60) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # halfway through the cosine
    assert cfg.lr_at(110) == pytest.approx(1e-4)
    after = [cfg.lr_at(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(after, after[1:]))


def test_weight_decay_only_on_matrices(micro):
    """Oracle: by name, norm gains, biases, SCR score heads and scales are not decayed."""
    model = build_model(micro, 0)
    decay, no_decay = make_optimizer(model, TrainConfig()).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert "model.layers.0.scr.scale" in undecayed and "model.norm.weight" in undecayed
    assert {names[id(p)] for p in decay["params"]} == {
        n for n, p in model.named_parameters() if p.dim() == 2}


def test_data_shorter_than_a_window_is_refused(micro, tmp_path):
    """Oracle: the message states the window length needed."""
    with pytest.raises(ScredgeError, match="validation data is shorter(.|\n)*33 bytes"):
        train(micro, TrainConfig(steps=2, **FAST), b"x" * 1000, b"short", tmp_path)


def test_cli_train_end_to_end(micro, tmp_path, capsys):
    """Oracle: the command's model.safetensors loads with the config it was given, its log
    records the command, and a bad flag exits 2 with the project's message."""
    config = tmp_path / "micro.json"
    config.write_text(json.dumps({"model": micro.to_dict()}))
    text = tmp_path / "text.txt"
    text.write_bytes(prose_corpus()[:30_000])
    out = tmp_path / "run"
    argv = ["train", "--config", str(config), "--data", str(text), "--steps", "4",
            "--batch-size", "4", "--seq-len", "32", "--eval-batches", "2", "--out", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "step 4/4" in stdout and "wrote" in stdout
    assert load_checkpoint(out / "model.safetensors").config == micro
    log = json.loads((out / "train_log.json").read_text())
    assert log["meta"]["command"] == ["scredge", *argv] and log["meta"]["data"]["kind"] == "text"
    assert main(argv[:-2] + ["--out", str(tmp_path / "r2"), "--scr-layers", "none",
                             "--window", "4", "--stop-at", "2"]) == 0
    assert json.loads((tmp_path / "r2" / "train_log.json").read_text())["model_config"][
        "scr_layers"] == []
    assert main(argv[:-2] + ["--out", str(tmp_path / "r3"), "--window", "wide"]) == 2
    assert "scredge train: error: invalid --window" in capsys.readouterr().err
