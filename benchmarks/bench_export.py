"""Export wall time, verification included, for the `tiny` and `small` presets.

Targets (export issue): tiny < 30 s, small < 2 min on a 2-core CPU machine.
Usage: python benchmarks/bench_export.py [--repeat N] [--presets tiny small] [--dtype float32]
Prints one line per preset: median and every sample, in seconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from scredge.export.pipeline import export_artifact
from scredge.export.sources import from_preset

TARGET_S = {"tiny": 30.0, "small": 120.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for preset in args.presets:
        samples = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                # model construction is part of what the user waits for
                src = from_preset(preset, seed=0)
                export_artifact(src.model, Path(tmp) / preset, dtype=args.dtype,
                                source=src.description)
                samples.append(time.perf_counter() - t0)
        med = statistics.median(samples)
        target = TARGET_S.get(preset)
        verdict = "" if target is None else f"  target < {target:.0f} s: " + (
            "met" if med < target else "MISSED")
        print(f"export {preset:<6} {args.dtype}: median {med:6.1f} s  samples "
              f"{', '.join(f'{s:.1f}' for s in samples)}{verdict}", flush=True)


if __name__ == "__main__":
    main()
