"""Optional files of an artifact (the Hugging Face tokenizer files, the held-out reference of
a quantized artifact, the golden file) are read only when manifest.json lists them, through
the same `listed_member` check (issue 14). Oracles: manifest.json's `files` (what may be
read), and the file outside the folder (never read)."""

from __future__ import annotations

import json
import shutil

import pytest
from artifact_tools import copy_artifact, read_json, rehash

from scredge.cli import main
from scredge.contract import (
    CHAT_TEMPLATE_FILE,
    GOLDEN_FILE,
    HELDOUT_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
)
from scredge.errors import ScredgeError
from scredge.runtime import Engine
from scredge.runtime.hf_tokenizer import HFTokenizer

TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE,
                   CHAT_TEMPLATE_FILE)


def _list(folder, *names) -> None:
    manifest = read_json(folder / "manifest.json")
    for name in names:
        manifest["files"][name] = {"sha256": "0" * 64, "bytes": 0}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    rehash(folder)


def _unlist(folder, name) -> None:
    manifest = read_json(folder / "manifest.json")
    manifest["files"].pop(name)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def with_tokenizer(small_window_artifact, hf_tokenizer_dir, tmp_path):
    """A copy of the micro artifact carrying every tokenizer file, all listed."""
    folder = copy_artifact(small_window_artifact[1], tmp_path / "art")
    source = hf_tokenizer_dir[0]
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
        else:  # transformers no longer writes this one; older hub folders carry it
            (folder / name).write_text(json.dumps({"eos_token": "</s>"}))
    _list(folder, *TOKENIZER_FILES)
    return folder


def test_listed_tokenizer_files_are_used(with_tokenizer):
    engine = Engine.load(with_tokenizer)
    assert isinstance(engine.tokenizer, HFTokenizer)
    assert engine.tokenizer.chat_template == (with_tokenizer / CHAT_TEMPLATE_FILE).read_text()


@pytest.mark.parametrize("name", TOKENIZER_FILES)
def test_an_unlisted_tokenizer_file_is_refused(with_tokenizer, name):
    """Before: each was read by path, so a file dropped into the folder after export (or
    left there by hand) changed how text was encoded, with every hash still matching."""
    _unlist(with_tokenizer, name)
    with pytest.raises(ScredgeError, match=f"'{name}' that manifest.json does not list"):
        Engine.load(with_tokenizer)


@pytest.mark.parametrize("name", [TOKENIZER_FILE, CHAT_TEMPLATE_FILE])
def test_a_tokenizer_file_linking_out_is_refused(with_tokenizer, tmp_path, name):
    outside = tmp_path / "outside.txt"
    shutil.copy(with_tokenizer / name, outside)
    (with_tokenizer / name).unlink()
    (with_tokenizer / name).symlink_to(outside)
    _unlist(with_tokenizer, name)
    with pytest.raises(ScredgeError, match="symlink leading outside"):
        Engine.load(with_tokenizer)


def test_heldout_read_only_when_listed(tiny_quantized, tmp_path, capsys):
    """The quantized tier's reference: unlisted but present is refused; absent is named."""
    folder = copy_artifact(tiny_quantized[8], tmp_path / "q8")
    _unlist(folder, HELDOUT_FILE)
    assert main(["parity", str(folder)]) == 2
    assert f"'{HELDOUT_FILE}' that manifest.json does not list" in capsys.readouterr().err
    (folder / HELDOUT_FILE).unlink()
    assert main(["parity", str(folder)]) == 2
    assert "no held-out reference" in capsys.readouterr().err


def test_golden_file_read_only_when_listed(small_window_artifact, tmp_path, capsys):
    """An unlisted parity/golden.npz is never read; a listed one that is not a golden file
    is a clean error."""
    folder = copy_artifact(small_window_artifact[1], tmp_path / "art")
    (folder / "parity").mkdir()
    (folder / GOLDEN_FILE).write_bytes(b"PK\x03\x04 not a zip")
    assert main(["parity", str(folder)]) == 2
    assert f"'{GOLDEN_FILE}' that manifest.json does not list" in capsys.readouterr().err
    _list(folder, GOLDEN_FILE)
    assert main(["parity", str(folder)]) == 2
    assert "golden reference file is unreadable" in capsys.readouterr().err
