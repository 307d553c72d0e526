"""Every command that reads an artifact reads what was verified (issue 30, class 6): the
parity tiers' graphs (op and decode tiers, onnxruntime and the TensorRT op tier share
`verified_graph`), the golden file, and the reference weights that `parity --record`,
`bench --compare torch` and `bench --scr-overhead` load. Oracle: a file changed after the
folder was opened (same size, one byte flipped: only its sha256 tells) is refused with the
trust boundary's own message, never used; the untouched folder still passes."""

from __future__ import annotations

import shutil

import pytest

from scredge.contract import GOLDEN_FILE, ONNX_FILE, WEIGHTS_FILE
from scredge.errors import ScredgeError
from scredge.golden_file import Golden
from scredge.runtime.loaders import open_artifact
from scredge.tiers import tier_thresholds

CHANGED = "changed after the folder was opened"


@pytest.fixture
def art(recorded, tmp_path):
    return shutil.copytree(recorded, tmp_path / "a")


def _flip(path, at: int = -9) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _opened_then_changed(name: str):
    """open_artifact as the command calls it, with `name` changed right after the open."""
    def opened(folder):
        artifact = open_artifact(folder)
        _flip(artifact.folder / name)
        return artifact
    return opened


def test_parity_tiers_read_the_verified_graph(art):
    """op_tier and decode_tiers after model.onnx changed: refused; before: they run."""
    from scredge.parity.ort_tiers import decode_tiers, op_tier

    artifact = open_artifact(art)
    golden = Golden.load(art / GOLDEN_FILE)
    th = tier_thresholds(artifact.dtype)
    assert op_tier(artifact, golden, th, "cpu").passed
    _flip(art / ONNX_FILE)
    for tier in (op_tier, decode_tiers):
        with pytest.raises(ScredgeError, match=CHANGED):
            tier(artifact, golden, th, "cpu")


def test_parity_reads_the_verified_golden_file(art, monkeypatch):
    from scredge.parity import run

    monkeypatch.setattr(run, "open_artifact", _opened_then_changed(GOLDEN_FILE))
    with pytest.raises(ScredgeError, match=CHANGED):
        run.check(art, device="cpu")


def test_record_and_bench_load_the_verified_reference_weights(art, monkeypatch):
    """parity --record (record_golden) and bench --compare torch: the weights changed
    after the open are refused, not loaded into the reference model."""
    from scredge.bench import report
    from scredge.parity.record import record_golden

    artifact = open_artifact(art)
    _flip(art / WEIGHTS_FILE)
    with pytest.raises(ScredgeError, match=CHANGED):
        record_golden(artifact)
    _flip(art / WEIGHTS_FILE)  # back as listed
    monkeypatch.setattr(report, "open_artifact", _opened_then_changed(WEIGHTS_FILE))
    with pytest.raises(ScredgeError, match=CHANGED):
        report.run_bench(art, device="cpu", prompt_len=4, gen_len=2, warmup=0, repeat=1,
                         compare_torch=True)
