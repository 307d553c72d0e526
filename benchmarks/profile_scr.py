"""Where SCR's time goes: onnxruntime's own profiler, per op type, for a decode step and a
prefill call of the same weights with SCR on every layer and without SCR (`scr_layers = []`).

Kernel time is the profiler's `*_kernel_time` events; "executor" is the rest of each
`model_run` (node dispatch, output allocation, shape inference between kernels). Nodes are
counted as SCR's when their name has `/scr/` (the `proj` and gated residual) or when they
come from the inlined `scr.Realign` function (onnxruntime names those `<OpType>_<index>`,
or `/<Fusion>/...` once fused; every other node of our graphs has a `/model/...` name).
The profiler adds its own cost per node, so absolute figures are above the unprofiled
ones; `bench_scr_overhead.py` gives the unprofiled ratios.

`--realign custom-op` runs the SCR model's Realign nodes with the custom-op kernel library
(runtime/realign_kernel.py; one `Realign` node per SCR layer in the profile) instead of the
function body (the default here, so the decomposed nodes can be seen).

Usage: python benchmarks/profile_scr.py [--presets tiny small] [--steps 32] [--threads 1]
       [--prompt 64] [--prefill 256] [--artifacts DIR] [--markdown]
       [--realign function|custom-op]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scr_overhead import ensure_pair  # noqa: E402

_INLINED = re.compile(r"^(?:[A-Za-z]+_\d+(?:_token_\d+)?|/[A-Za-z]+Fusion/.*)$")


def is_scr_node(name: str) -> bool:
    """True for the nodes SCR adds (see the module docstring for the naming rule)."""
    return "/scr/" in name or bool(_INLINED.match(name))


@dataclass
class RunProfile:
    """Per op type: kernel microseconds and node count of one run."""

    wall_us: float = 0.0
    kernel_us: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    nodes: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    scr_kernel_us: float = 0.0
    scr_nodes: float = 0.0

    @property
    def executor_us(self) -> float:
        return self.wall_us - sum(self.kernel_us.values())


def summarise(events: list[dict], runs: list[dict]) -> RunProfile:
    """One profile of `runs` (model_run events): each node's median kernel time over the
    runs, summed per op type, so a run the scheduler preempted does not count."""
    nodes = sorted((e for e in events if e.get("cat") == "Node"
                    and e["name"].endswith("_kernel_time")), key=lambda e: e["ts"])
    per_node: dict[str, list[float]] = defaultdict(list)
    op_of: dict[str, str] = {}
    for run in runs:
        start, end = run["ts"], run["ts"] + run["dur"]
        for e in nodes:
            if start <= e["ts"] <= end:
                name = e["name"][: -len("_kernel_time")]
                per_node[name].append(e["dur"])
                op_of[name] = e["args"]["op_name"]
    out = RunProfile(wall_us=statistics.median(r["dur"] for r in runs))
    for name, durations in per_node.items():
        us = statistics.median(durations)
        out.kernel_us[op_of[name]] += us
        out.nodes[op_of[name]] += 1
        if is_scr_node(name):
            out.scr_kernel_us += us
            out.scr_nodes += 1
    return out


def profile(folder: Path, *, steps: int, prompt: int, prefill: int, threads: int,
            prefills: int = 3, realign=None):
    """(decode profile, prefill profile) of the artifact in `folder`, onnxruntime CPU;
    `realign` a runtime.realign_kernel.RealignKernel to register (None: function body)."""
    from scredge.contract import ONNX_FILE
    from scredge.runtime.loaders import open_artifact, ort_session
    from scredge.runtime.runners.ort_runner import OrtRunner

    artifact = open_artifact(folder)
    with tempfile.TemporaryDirectory(prefix="scredge-prof-") as tmp:
        session = ort_session(folder / ONNX_FILE, "cpu", threads=threads,
                              profile_prefix=Path(tmp) / "ort", realign=realign)
        runner = OrtRunner(session, artifact.config, artifact.kv_dtype)
        vocab = artifact.config.vocab_size
        ids = (np.arange(prefill, dtype=np.int64) % vocab).reshape(1, -1)
        pos = np.arange(prefill, dtype=np.int64).reshape(1, -1)
        for _ in range(1 + prefills):  # the first one warms up
            runner.decoder(1).step(ids, pos)
        decoder = runner.decoder(1)
        decoder.step(ids[:, :prompt], pos[:, :prompt])
        for i in range(steps + 4):  # 4 warm-up steps
            decoder.step(np.array([[i % vocab]]), np.array([[prompt + i]]))
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    # runs: warm-up, `prefills` profiled prefills, the prompt, 4 warm-up steps, `steps`
    return summarise(events, runs[2 + prefills + 4:]), summarise(events, runs[1:1 + prefills])


def _row(label: str, a: float, b: float, na: float | None = None,
         nb: float | None = None) -> str:
    if na is None:
        return f"| {label} | {a:.1f} | {b:.1f} | {a - b:+.1f} |"
    return f"| {label} | {a:.1f} ({na:.0f}) | {b:.1f} ({nb:.0f}) | {a - b:+.1f} ({na - nb:+.0f}) |"


def table(with_scr: RunProfile, without: RunProfile, title: str) -> list[str]:
    """Markdown rows: per op type, microseconds and nodes per run, by the difference."""
    a, b = with_scr, without

    def delta(op: str) -> float:
        return a.kernel_us.get(op, 0.0) - b.kernel_us.get(op, 0.0)

    ops = sorted(set(a.kernel_us) | set(b.kernel_us), key=lambda op: -delta(op))
    changed = [op for op in ops if abs(delta(op)) >= 0.5 or a.nodes.get(op) != b.nodes.get(op)]
    lines = [f"**{title}** (µs per run; nodes per run in brackets)", "",
             "| op type | with SCR | without | difference |", "|---|---|---|---|"]
    lines += [_row(op, a.kernel_us.get(op, 0.0), b.kernel_us.get(op, 0.0),
                   a.nodes.get(op, 0.0), b.nodes.get(op, 0.0)) for op in changed]
    same = sorted(set(ops) - set(changed))
    if same:
        lines.append(f"| (within 0.5 µs: {', '.join(same)}) | | | |")
    lines += [
        _row("all kernels", sum(a.kernel_us.values()), sum(b.kernel_us.values()),
             sum(a.nodes.values()), sum(b.nodes.values())),
        _row("executor (between kernels)", a.executor_us, b.executor_us),
        _row("**model_run**", a.wall_us, b.wall_us) + f" x{a.wall_us / b.wall_us:.2f}",
        "",
        f"SCR's own nodes: {a.scr_nodes:.0f} per run, {a.scr_kernel_us:.1f} µs of kernel time, "
        f"{a.scr_kernel_us / max(sum(a.kernel_us.values()) - a.scr_kernel_us, 1e-9):.1%} of the "
        f"other nodes' (a ratio within one profile: the least disturbed by other tenants).",
        ""]
    return lines


def median_profile(profiles: list[RunProfile]) -> RunProfile:
    """Per-field medians over repeated profiles (the machine is shared)."""
    out = RunProfile()
    out.wall_us = statistics.median(p.wall_us for p in profiles)
    for op in {op for p in profiles for op in p.kernel_us}:
        out.kernel_us[op] = statistics.median(p.kernel_us.get(op, 0.0) for p in profiles)
        out.nodes[op] = statistics.median(p.nodes.get(op, 0.0) for p in profiles)
    out.scr_kernel_us = statistics.median(p.scr_kernel_us for p in profiles)
    out.scr_nodes = statistics.median(p.scr_nodes for p in profiles)
    return out


def main(argv: list[str] | None = None) -> list[str]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--prefill", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="profiles per model, alternating")
    ap.add_argument("--artifacts", type=Path, default=None)
    ap.add_argument("--config", type=Path, default=None, help="a config JSON instead of presets")
    ap.add_argument("--realign", choices=["function", "custom-op"], default="function",
                    help="what runs the SCR model's Realign nodes")
    args = ap.parse_args(argv)
    realign = None
    if args.realign == "custom-op":
        from scredge.runtime.realign_kernel import CUSTOM_OP, pick

        realign = pick("cpu")
        if realign.kind != CUSTOM_OP:
            raise SystemExit(f"no Realign kernel: {realign.reason}")
    root = args.artifacts or Path(tempfile.mkdtemp(prefix="scredge-prof-"))
    lines: list[str] = []
    for name in (["config"] if args.config else args.presets):
        pair = ensure_pair(name, root, config=args.config)
        runs: dict[str, list] = {"scr": [], "plain": []}
        for _ in range(args.repeat):
            for kind, folder in (("scr", pair.scr), ("plain", pair.plain)):
                runs[kind].append(profile(folder, steps=args.steps, prompt=args.prompt,
                                          prefill=args.prefill, threads=args.threads,
                                          realign=realign if kind == "scr" else None))
        dec = [median_profile([r[0] for r in runs[k]]) for k in ("scr", "plain")]
        pre = [median_profile([r[1] for r in runs[k]]) for k in ("scr", "plain")]
        lines += table(dec[0], dec[1], f"{name}: decode step (prompt {args.prompt}, "
                       f"{args.steps} steps, {args.threads} thread(s), Realign: "
                       f"{args.realign})")
        lines += table(pre[0], pre[1], f"{name}: prefill of {args.prefill} tokens")
    print("\n".join(lines), flush=True)
    return lines


if __name__ == "__main__":
    main()
