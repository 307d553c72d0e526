"""`scredge train --out` is a run folder (issue 14). Oracle: the files on disk before and
after a refused run (`snapshot`), and the exit status of the CLI."""

from __future__ import annotations

import pytest
from artifact_tools import copy_artifact, snapshot

from scredge.cli import main
from scredge.errors import ScredgeError
from scredge.ref.train import TrainConfig, train

FAST = dict(batch_size=4, seq_len=32, eval_batches=2, log_every=2, warmup_steps=2)
DATA = (bytes(range(256)) * 20, bytes(range(256)) * 4)


def test_out_into_an_artifact_is_refused(small_window_artifact, tmp_path, micro):
    """Before: the run overwrote the artifact's model.safetensors, leaving it broken."""
    art = copy_artifact(small_window_artifact[1], tmp_path / "art")
    before = snapshot(tmp_path)
    with pytest.raises(ScredgeError, match=r"not a training run's folder(.|\n)*manifest.json"):
        train(micro, TrainConfig(steps=2, **FAST), *DATA, art)
    with pytest.raises(ScredgeError, match="not a training run's folder"):
        train(micro, TrainConfig(steps=2, **FAST), *DATA, art, resume=True)
    assert snapshot(tmp_path) == before


def test_out_an_existing_file_or_under_one(tmp_path, micro, capsys):
    """Before: FileExistsError traceback."""
    (tmp_path / "f").write_text("mine\n")
    before = snapshot(tmp_path)
    for out in (tmp_path / "f", tmp_path / "f" / "run"):
        with pytest.raises(ScredgeError, match="--out"):
            train(micro, TrainConfig(steps=2, **FAST), *DATA, out)
    assert main(["train", "--preset", "tiny", "--steps", "1", "--out", str(tmp_path / "f")]) == 2
    assert "--out exists and is not a folder" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_out_a_folder_of_other_things(tmp_path, micro):
    (tmp_path / "notes.txt").write_text("mine\n")
    with pytest.raises(ScredgeError, match=r"not a training run's folder(.|\n)*notes.txt"):
        train(micro, TrainConfig(steps=2, **FAST), *DATA, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_one_run_per_folder_and_a_folder_replaced_mid_run(tmp_path, micro):
    """Issue 30, class 5 for train --out (a run folder written in place, core/destination's
    FolderLock). Oracles: the files on disk. A second run into a folder another run holds
    is refused before it writes anything; a run whose folder is moved away and replaced by
    another folder mid-run (from its progress callback) stops with a ScredgeError and
    writes nothing into the new folder; its checkpoints stay in the moved one."""
    from scredge.destination import FolderLock

    out = tmp_path / "run"
    out.mkdir()
    with FolderLock(out), pytest.raises(ScredgeError, match="another scredge run"):
        train(micro, TrainConfig(steps=2, **FAST), *DATA, out)
    assert list(out.iterdir()) == []

    def swap(line: str) -> None:
        if "step" in line and not (tmp_path / "moved").exists() and (out / "last.pt").exists():
            out.rename(tmp_path / "moved")
            out.mkdir()
            (out / "mine.txt").write_text("mine\n")

    cfg = TrainConfig(steps=8, checkpoint_every=2, **FAST)
    with pytest.raises(ScredgeError, match="moved or replaced"):
        train(micro, cfg, *DATA, out, progress=swap)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert (tmp_path / "moved" / "last.pt").is_file()
