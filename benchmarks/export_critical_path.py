"""The critical path of one `scredge export --from-llama` in CPU seconds (issue 27, round 3):
the exporting process and its trace child each timed by their own CPU clock at the fork,
the trace's end and the join, so a loaded machine (other sessions on the same cores)
stretches the figure far less than it stretches wall time.

    critical path = max(parent CPU up to the join, parent CPU at the fork + child CPU)
                    + parent CPU after the join

On an idle two-core machine the wall time is about that. Usage:

    python benchmarks/export_critical_path.py HF_FOLDER [--out DIR]

(`--scr-layers none`, the slim default folder, as bench_export_genai.py runs it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("hf", type=Path)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "scredge-cp")
    args = ap.parse_args()
    marks = Path(tempfile.mkstemp(suffix=".marks")[1])
    t0 = time.time()

    def mark(what: str) -> None:  # appended by both processes (the child is forked)
        with open(marks, "a") as f:
            f.write(f"{os.getpid()} {time.time() - t0:.3f} {time.process_time():.3f} {what}\n")

    import scredge.export.stamp as stamp
    import scredge.export.stamp_apart as apart
    from scredge.cli import main as cli

    start, inner = apart.start_stamp, stamp._stamp

    def start_stamp(*a, **k):
        mark("fork")
        result = start(*a, **k)

        def joined():
            got = result()
            mark("joined")
            return got

        joined.cancel, joined.apart = result.cancel, result.apart
        return joined

    def stamped(*a, **k):
        got = inner(*a, **k)
        mark("stamped")
        return got

    apart.start_stamp, stamp._stamp = start_stamp, stamped
    argv = ["export", "--from-llama", str(args.hf), "--scr-layers", "none", "--out",
            str(args.out), "--force"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cli(argv)
    mark("end")
    rows = [line.rstrip("\n").split(None, 3) for line in marks.read_text().splitlines()]
    marks.unlink()
    me = str(os.getpid())
    parent = {w: float(c) for pid, _, c, w in rows if pid == me}
    child = {w: float(c) for pid, _, c, w in rows if pid != me}
    wall = {w: float(t) for pid, t, _, w in rows if pid == me}
    path = max(parent["joined"], parent["fork"] + child["stamped"]) + (
        parent["end"] - parent["joined"])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"fork at {parent['fork']:.2f} s CPU; trace child {child['stamped']:.2f}; parent "
          f"up to the join {parent['joined']:.2f}, after it {parent['end'] - parent['joined']:.2f}"
          f"; critical path {path:.2f} CPU-s; all CPU {parent['end'] + child['stamped']:.2f}; "
          f"wall {wall['end']:.1f} s; peak {rss:.0f} MiB; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
