"""Resident memory of a benchmarked child process, sampled on a thread (tracemalloc sees
neither numpy's nor torch's buffers): bench_export_genai.timed stamps each log line with
it and keeps the samples beside the log, so a peak can be placed against the log."""

from __future__ import annotations

import os
from pathlib import Path


def _rss_mib(pid: int) -> float:
    """VmRSS of `pid` in MiB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def _pss_mib(pid: int) -> float:
    """Pss of `pid` in MiB (its pages, those it shares divided among their sharers; 0 once
    it is gone): summed over a process tree, the tree's own memory."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("Pss:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (an export's model child and its trace child), from
    /proc."""
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    out += process_tree(int(child))
    except OSError:
        pass  # gone meanwhile
    return out


class Sampler:
    """The child's memory every `every` seconds, on a thread: the largest VmRSS of one
    process of its tree now (`now`, what `ru_maxrss` reports at its peak), each sample
    written to `path` (seconds, MiB), so the peak can be placed against the log's stamped
    lines; and the largest summed Pss of the whole tree (`tree_pss`): forked processes
    that run side by side each count, their shared pages once (tracemalloc sees neither
    numpy's nor torch's buffers)."""

    def __init__(self, pid: int, t0: float, path: Path, every: float = 0.2):
        import threading

        self.pid, self.t0, self.every, self.now, self.tree_pss = pid, t0, every, 0.0, 0.0
        self.out = open(path, "w")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import time

        while not self._stop.is_set():
            tree = process_tree(self.pid)
            self.now = max((_rss_mib(p) for p in tree), default=0.0)
            pss = sum(_pss_mib(p) for p in tree)
            self.tree_pss = max(self.tree_pss, pss)
            self.out.write(f"{time.perf_counter() - self.t0:.2f}\t{self.now:.0f}\t{pss:.0f}\n")
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.out.close()
