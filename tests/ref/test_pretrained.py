"""The shipped `tiny` checkpoint. Oracles: its training record (sha256, config, final
validation loss recomputed here on the same validation windows), the export verification
against the reference, and plain byte statistics of what it generates."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import scredge.ref.pretrained as pretrained
from scredge.cli import main
from scredge.config import SCRConfig
from scredge.errors import ScredgeError
from scredge.export import sources
from scredge.export.pipeline import export_artifact
from scredge.ref import generate, load_checkpoint
from scredge.ref.corpus import prose_corpus, sha256, split
from scredge.ref.train import val_windows


@pytest.fixture(scope="module")
def tiny():
    return load_checkpoint(pretrained.path("tiny")).eval()


def test_record_matches_the_file_and_the_preset(tiny):
    info = pretrained.record("tiny")
    assert "tiny" in pretrained.names()
    assert info["command"][:2] == ["scredge", "train"]
    assert tiny.config == SCRConfig.preset("tiny")  # SCR in every layer, W = 128


def test_recorded_validation_loss_is_reproduced(tiny):
    """Oracle: the record's final validation loss, recomputed on the same windows of the
    same prose split (when this Python ships the same prose the model was trained on)."""
    info = pretrained.record("tiny")
    train_cfg = info["train_config"]
    train_bytes, val_bytes = split(prose_corpus(), info["val_fraction"])
    if sha256(val_bytes) != info["data"]["val_sha256"]:
        pytest.skip("this Python's pydoc_data differs from the training data's")
    val = val_windows(np.frombuffer(val_bytes, np.uint8),
                      train_cfg["eval_batches"] * train_cfg["batch_size"], train_cfg["seq_len"])
    positions = torch.arange(train_cfg["seq_len"]).expand(val.shape[0], -1)
    with torch.no_grad():
        logits, _ = tiny(val[:, :-1], positions)
    loss = F.cross_entropy(logits.flatten(0, 1), val[:, 1:].flatten()).item()
    assert loss == pytest.approx(info["final_val_loss"], abs=2e-3)
    assert loss < 1.6  # nats per byte; an untrained model is at ~5.3


def test_generates_text_not_random_bytes(tiny):
    """Oracle: byte statistics. Untrained weights give bytes spread over all 256 values."""
    prompt = list(b"The object ")
    ids = generate(tiny, prompt, 120)[0]
    text = bytes(ids)
    printable = sum(32 <= b < 127 or b == 10 for b in text) / len(text)
    assert printable > 0.95
    assert text.count(b" ") >= 8  # words, not one long run


@pytest.mark.slow
def test_exports_and_passes_the_export_verification(tmp_path):
    """Oracle: export_artifact's own check of onnxruntime against the reference (it
    refuses to write the folder otherwise)."""
    src = sources.from_pretrained("tiny")
    assert src.description["sha256"] == pretrained.record("tiny")["sha256"]
    out = export_artifact(src.model, tmp_path / "tiny", source=src.description)
    assert (out / "model.onnx").is_file() and (out / "manifest.json").is_file()


def test_a_changed_file_is_refused(tmp_path, monkeypatch):
    info = pretrained.record("tiny")
    folder = tmp_path / "pretrained"
    shutil.copytree(pretrained.FOLDER, folder)
    weights = folder / info["file"]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(pretrained, "FOLDER", folder)
    with pytest.raises(ScredgeError, match="does not match its record"):
        pretrained.path("tiny")
    with pytest.raises(ScredgeError, match="no shipped checkpoint"):
        pretrained.record("huge")


def test_cli_refuses_pretrained_with_weights(tmp_path, capsys):
    code = main(["export", "--pretrained", "tiny", "--weights", "x.safetensors",
                 "--out", str(tmp_path / "a")])
    assert code != 0
    captured = capsys.readouterr()
    assert "--pretrained takes no" in captured.err + captured.out
    assert not (tmp_path / "a").exists()
