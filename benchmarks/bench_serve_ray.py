"""`scredge serve --ray` against plain `scredge serve`, same run, same machine: aggregate
decode throughput (all completion tokens / wall time of the load) at N concurrent
streaming clients, through the plain server and through Ray Serve's proxy with 1 and 2
replicas, medians over repeats (the setups alternate each round, so drift hits all
alike). Also the CPU seconds the server side spent per run (this process, and for Ray
every process of its local cluster; the clients' process is not counted).

The clients are bench_serve.py's (a child process, one asyncio loop, greedy requests of
fixed budgets). The Ray cluster is local: a replica of 2 replicas gets 1 CPU (one
onnxruntime thread), the single replica 2; the plain server uses every core.

Usage: python benchmarks/bench_serve_ray.py [--preset tiny | --folder DIR]
       [--clients 16 64] [--replicas 1 2] [--tokens 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import MODEL, request_body, run_load  # noqa: E402

CPUS = 2  # the local Ray cluster's CPUs: this machine's cores


def tree_cpu_s(root: int) -> float:
    """user + system CPU seconds of `root` and every live process below it (/proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = path.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        stats[int(path.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])))
    below, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in stats.items():
            if ppid == parent and pid not in below:
                below.add(pid)
                frontier.append(pid)
    return sum(stats[p][1] for p in below if p in stats) / tick


def measure(url: str, clients: int, tokens: int) -> dict:
    before = tree_cpu_s(os.getpid())
    row = run_load(url, clients, tokens, concurrent=True)
    row["server_cpu_s"] = tree_cpu_s(os.getpid()) - before
    return row


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ray(folder: Path, replicas: list[int], max_batch: int) -> dict[str, str]:
    """A local cluster, Serve's proxy on a free port, one application per replica count."""
    import ray
    from ray import serve

    from scredge.serve import ray_app

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # each application's replicas hold CPUS logical CPUs, so all stay deployed; only one
    # application is under load at a time
    ray.init(num_cpus=CPUS * len(replicas), include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    urls = {}
    for r in replicas:
        serve.run(ray_app(folder, replicas=r, num_cpus=CPUS / r, model_name=MODEL,
                          backend="ort", max_batch=max_batch, max_queue=2 * max_batch),
                  name=f"r{r}", route_prefix=f"/r{r}")
        urls[f"ray, {r} replica{'s' if r > 1 else ''}"] = \
            f"http://127.0.0.1:{port}/r{r}/v1/completions"
    return urls


def bench(folder: Path, clients: list[int], replicas: list[int], tokens: int,
          repeat: int) -> list[dict]:
    import httpx
    from ray import serve

    from scredge.runtime import Engine
    from scredge.serve import ServerConfig, ServerThread

    max_batch = max(clients)
    engine = Engine.load(folder, backend="ort")
    with ServerThread(engine, ServerConfig(MODEL, max_batch=max_batch,
                                           max_queue=2 * max_batch)) as plain:
        urls = {"plain scredge serve": f"{plain.base_url}/completions",
                **start_ray(folder, replicas, max_batch)}
        try:
            for url in urls.values():  # warm-up: every replica loaded and answering
                for _ in range(4):
                    httpx.post(url, json={**request_body(0, 4), "stream": False}, timeout=600)
            runs: dict[tuple[str, int], list[dict]] = {}
            for _ in range(repeat):
                for name, url in urls.items():
                    for n in clients:
                        runs.setdefault((name, n), []).append(measure(url, n, tokens))
        finally:
            serve.shutdown()
            import ray

            ray.shutdown()
    engine.close()
    return report(runs, clients)


def report(runs: dict, clients: list[int]) -> list[dict]:
    rows = []
    for n in clients:
        base = None
        for (name, m), got in runs.items():
            if m != n:
                continue
            med = {k: statistics.median(r[k] for r in got) for k in got[0]}
            base = base or med["tokens_per_s"]  # the plain server comes first
            rows.append({"setup": name, "clients": n, **med,
                         "vs_plain": med["tokens_per_s"] / base})
            print(f"{n:>3} clients | {name:<22} {med['tokens_per_s']:8.1f} tok/s "
                  f"({med['tokens_per_s'] / base:4.2f}x plain) | TTFT p50 "
                  f"{med['ttft_p50'] * 1e3:7.1f} ms | ITL p50 {med['itl_p50'] * 1e3:6.2f} ms | "
                  f"server CPU {med['server_cpu_s']:6.2f} s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--folder", type=Path, help="an artifact folder instead of the preset")
    ap.add_argument("--clients", nargs="+", type=int, default=[16, 64])
    ap.add_argument("--replicas", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--tokens", type=int, default=64, help="completion tokens per request")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    folder = args.folder
    if folder is None:
        from scredge.export.pipeline import export_artifact
        from scredge.export.sources import from_preset

        folder = Path(tempfile.mkdtemp(prefix="scredge-bench-ray-")) / args.preset
        src = from_preset(args.preset, seed=0)
        export_artifact(src.model, folder, source=src.description)
    print(f"medians of {args.repeat}; {args.tokens} tokens per streaming request; a local Ray "
          f"cluster on this machine, {CPUS} CPUs per application's replicas", flush=True)
    return bench(folder, args.clients, args.replicas, args.tokens, args.repeat)


if __name__ == "__main__":
    main()
