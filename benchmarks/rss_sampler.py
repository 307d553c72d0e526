"""Resident memory of a benchmarked child process, sampled on a thread (tracemalloc sees
neither numpy's nor torch's buffers): bench_export_genai.timed stamps each log line with
it and keeps the samples beside the log, so a peak can be placed against the log."""

from __future__ import annotations

from pathlib import Path


def _rss_mib(pid: int) -> float:
    """VmRSS of `pid` in MiB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def _tree(pid: int) -> list[int]:
    """`pid` and its children (the trace's forked child), from /proc."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [pid, *(int(c) for c in f.read().split())]
    except OSError:
        return [pid]


class Sampler:
    """The child's resident memory every `every` seconds, on a thread: the largest VmRSS of
    its process tree now (`now`), and each sample written to `path` (seconds, MiB), so the
    peak can be placed against the log's stamped lines (tracemalloc sees neither numpy's
    nor torch's buffers)."""

    def __init__(self, pid: int, t0: float, path: Path, every: float = 0.2):
        import threading

        self.pid, self.t0, self.every, self.now = pid, t0, every, 0.0
        self.out = open(path, "w")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import time

        while not self._stop.is_set():
            self.now = max((_rss_mib(p) for p in _tree(self.pid)), default=0.0)
            self.out.write(f"{time.perf_counter() - self.t0:.2f}\t{self.now:.0f}\n")
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.out.close()
