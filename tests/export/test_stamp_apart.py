"""The trace's child forked early (export/stamp_apart.py): the graph it stamps against
`stamp_graph` in this process (the oracle), and children no export takes ended."""

from __future__ import annotations

from scredge.config import SCRConfig
from scredge.export import stamp_apart
from scredge.export.stamp import stamp_graph
from scredge.export.stamp_apart import (
    EARLY_SOURCE_BYTES,
    early_trace,
    start_stamp,
    submit_early,
)

CONFIG = SCRConfig.preset("tiny").with_(n_layers=5)


def test_early_child_stamps_the_graph_this_process_would():
    with early_trace(EARLY_SOURCE_BYTES):
        submit_early(CONFIG, "float32", 18)  # as soon as the config is known
        got = start_stamp(CONFIG, "float32", 18, apart=False)()
    want = stamp_graph(CONFIG, "float32", 18)
    assert got.recipes == want.recipes
    assert got.proto.SerializeToString() == want.proto.SerializeToString()


def test_an_early_child_no_export_takes_is_ended():
    """Oracle: the child process's own liveness. Left unused, or given another config's
    job than the export's, the child ends; a small source forks none."""
    with early_trace(EARLY_SOURCE_BYTES - 1):
        assert stamp_apart._waiting is None
    with early_trace(EARLY_SOURCE_BYTES):
        child = stamp_apart._waiting
        assert child is not None and child._proc.is_alive()
    assert not child._proc.is_alive() and stamp_apart._waiting is None
    with early_trace(EARLY_SOURCE_BYTES):
        child = stamp_apart._waiting
        submit_early(CONFIG.with_(n_layers=6), "float32", 18)
        result = start_stamp(CONFIG, "float32", 18, apart=False)  # not the job it was given
        assert not child._proc.is_alive()
        assert callable(result.cancel)
