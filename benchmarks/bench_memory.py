"""Constant memory over unbounded generation: RSS while generating 20,000 tokens on `tiny`.

The KV cache never holds more than W-1 positions and the SCR state is O(layers x width), so
resident memory must stay flat once the cache is full. Prints RSS (from /proc) at
checkpoints and the peak; sampling with temperature 1 so the run is not a fixed point.

Usage: python benchmarks/bench_memory.py [ARTIFACT_DIR] [--tokens 20000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from scredge.bench.latency import peak_rss_mib


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", type=Path)
    ap.add_argument("--tokens", type=int, default=20_000)
    args = ap.parse_args()
    folder = args.folder
    if folder is None:  # export in a child-free way: torch is only needed for this step
        from scredge.export.pipeline import export_artifact
        from scredge.export.sources import from_preset

        folder = Path(tempfile.mkdtemp(prefix="scredge-mem-")) / "tiny"
        src = from_preset("tiny")
        export_artifact(src.model, folder, source=src.description)
    from scredge.runtime import Engine

    engine = Engine.load(folder, backend="ort")
    gen = engine.generator("The memory test begins. ", temperature=1.0, seed=0,
                           max_new_tokens=args.tokens)
    marks = {1_000, 2_000, 5_000, 10_000, 15_000, args.tokens}
    t0, n, first = time.perf_counter(), 0, None
    print(f"{'tokens':>7} {'RSS MiB':>8} {'cache P':>8} {'tok/s':>7}")
    while not gen.is_done():
        gen.next_token()
        n += 1
        if n in marks:
            rss = rss_mib()
            first = first or rss
            print(f"{n:7d} {rss:8.1f} {gen.decoder.past:8d} {n / (time.perf_counter() - t0):7.0f}",
                  flush=True)
    peak = peak_rss_mib()
    print(f"RSS growth from 1,000 to {n:,} tokens: {rss_mib() - first:+.1f} MiB; "
          f"peak RSS {peak:.1f} MiB")


if __name__ == "__main__":
    main()
