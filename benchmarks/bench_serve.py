"""Load on `scredge serve`: N concurrent streaming clients against the same N requests sent
one at a time to the same server, same run. Aggregate tokens/s (all completion tokens /
wall time from the first request sent to the last one done), time to first token and
inter-token latency (gaps between a stream's events) p50/p99, medians over repeats.

Goal (serve issue): at 16 clients, aggregate decode throughput >= 3x one-at-a-time on tiny.

The clients run in a child process (one asyncio loop), the server in this one.

Usage: python benchmarks/bench_serve.py [--presets tiny small] [--clients 1 4 16]
       [--tokens 128] [--repeat 3] [--artifacts DIR | --folder DIR] [--backend ort]
       (exports missing presets into DIR, default a temp folder)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

GOAL = {"tiny": 3.0}  # aggregate speedup at 16 clients
MODEL = "bench"


@dataclass
class Trace:
    sent: float
    first: float | None = None
    done: float = 0.0
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0


def request_body(i: int, tokens: int) -> dict:
    """The i-th request: prompts of different lengths (8..56 bytes), greedy, a fixed
    budget (no stop), so both runs decode exactly the same tokens."""
    prompt = ("The quick brown fox jumps over the lazy dog. " * 2)[:8 + (i * 13) % 49]
    return {"model": MODEL, "prompt": prompt, "max_tokens": tokens, "temperature": 0,
            "stream": True}


async def stream_one(http, url: str, body: dict) -> Trace:
    trace = Trace(sent=time.perf_counter())
    last = None
    async with http.stream("POST", url, json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            now = time.perf_counter()
            event = json.loads(line[5:])
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
            if "usage" in event:
                trace.tokens = event["usage"]["completion_tokens"]
            if event["choices"][0]["text"]:
                if trace.first is None:
                    trace.first = now
                elif last is not None:
                    trace.gaps.append(now - last)
                last = now
    trace.done = time.perf_counter()
    return trace


async def load(url: str, n: int, tokens: int, concurrent: bool) -> dict:
    """The clients' side, in its own process (`--load`): one asyncio loop, n streams."""
    import asyncio

    bodies = [request_body(i, tokens) for i in range(n)]
    limits = httpx.Limits(max_connections=n + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        t0 = time.perf_counter()
        if concurrent:
            traces = await asyncio.gather(*(stream_one(http, url, b) for b in bodies))
        else:
            traces = [await stream_one(http, url, b) for b in bodies]
        wall = time.perf_counter() - t0
    ttft = [t.first - t.sent for t in traces if t.first is not None]
    gaps = [g for t in traces for g in t.gaps]
    return {"tokens_per_s": sum(t.tokens for t in traces) / wall,
            "ttft_p50": _pct(ttft, 50), "ttft_p99": _pct(ttft, 99),
            "itl_p50": _pct(gaps, 50), "itl_p99": _pct(gaps, 99)}


def run_load(url: str, n: int, tokens: int, concurrent: bool) -> dict:
    """The clients in a child process, so that their parsing does not share the server's
    interpreter (its GIL) as no real client would."""
    out = subprocess.run([sys.executable, __file__, "--load", url, str(n), str(tokens),
                          "concurrent" if concurrent else "sequential"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def bench_folder(name: str, folder: Path, clients: list[int], tokens: int, repeat: int,
                 backend: str) -> list[dict]:
    from scredge.runtime import Engine  # here: the clients' process needs neither
    from scredge.serve import ServerConfig, ServerThread

    engine = Engine.load(folder, backend=backend)
    config = ServerConfig(MODEL, max_batch=max(clients), max_queue=max(clients) * 2)
    rows = []
    with ServerThread(engine, config) as server:
        url = f"{server.base_url}/completions"
        httpx.post(url, json={**request_body(0, 4), "stream": False}, timeout=600)  # warm-up
        for n in clients:
            conc, seq = [], []
            server.scheduler.peak_batch = 0
            for _ in range(repeat):  # alternating, so drift hits both alike
                conc.append(run_load(url, n, tokens, concurrent=True))
                seq.append(run_load(url, n, tokens, concurrent=False))
            med = {k: statistics.median(r[k] for r in conc) for k in conc[0]}
            base = {k: statistics.median(r[k] for r in seq) for k in seq[0]}
            rows.append({"model": name, "clients": n, "concurrent": med, "one_at_a_time": base,
                         "speedup": med["tokens_per_s"] / base["tokens_per_s"],
                         "peak_batch": server.scheduler.peak_batch})
            print_row(rows[-1])
    engine.close()
    return rows


def print_row(r: dict) -> None:
    c, s = r["concurrent"], r["one_at_a_time"]
    goal = GOAL.get(r["model"]) if r["clients"] == 16 else None
    print(f"{r['model']:<6} {r['clients']:>3} clients | {c['tokens_per_s']:8.1f} tok/s vs "
          f"{s['tokens_per_s']:8.1f} one at a time -> {r['speedup']:5.2f}x"
          f"{f' (goal {goal:.1f}x)' if goal else ''} | TTFT p50/p99 "
          f"{c['ttft_p50'] * 1e3:7.1f}/{c['ttft_p99'] * 1e3:7.1f} ms (alone "
          f"{s['ttft_p50'] * 1e3:6.1f}) | ITL p50/p99 {c['itl_p50'] * 1e3:6.2f}/"
          f"{c['itl_p99'] * 1e3:6.2f} ms (alone {s['itl_p50'] * 1e3:5.2f})", flush=True)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--folder", type=Path, help="an artifact folder instead of presets")
    ap.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--tokens", type=int, default=128, help="completion tokens per request")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backend", default="ort", choices=["auto", "ort", "trt"])
    ap.add_argument("--artifacts", type=Path, default=None)
    ap.add_argument("--load", nargs=4, metavar=("URL", "N", "TOKENS", "MODE"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.load:
        import asyncio

        url, n, tokens, mode = args.load
        print(json.dumps(asyncio.run(load(url, int(n), int(tokens), mode == "concurrent"))))
        return []
    print(f"medians of {args.repeat}; streaming clients over HTTP on this machine; the "
          f"baseline sends the same requests one at a time to the same server", flush=True)
    if args.folder is not None:
        return bench_folder(args.folder.name, args.folder, args.clients, args.tokens,
                            args.repeat, args.backend)
    root = args.artifacts or Path(tempfile.mkdtemp(prefix="scredge-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for preset in args.presets:
        folder = root / preset
        if not folder.exists():
            from scredge.export.pipeline import export_artifact
            from scredge.export.sources import from_preset

            src = from_preset(preset, seed=0)
            export_artifact(src.model, folder, source=src.description)
        rows += bench_folder(preset, folder, args.clients, args.tokens, args.repeat,
                             args.backend)
    return rows


if __name__ == "__main__":
    main()
