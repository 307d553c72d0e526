"""`scredge bench`: latency of real generation (TTFT, ITL percentiles, tokens/s)."""

from __future__ import annotations

import argparse
from pathlib import Path

from scredge.cli.common import CUDA_GRAPH_HELP, add_folder, check_cuda_graph, print_json_or_lines


def add(sub) -> None:
    p = sub.add_parser("bench", help="latency of real generation: TTFT, ITL percentiles, tok/s")
    add_folder(p)
    p.add_argument("--backend", default="ort", choices=["ort", "trt"])
    p.add_argument("--cuda-graph", action="store_true",
                   help=CUDA_GRAPH_HELP + "; also times the same engine without them")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: all)")
    p.add_argument("--prompt-len", type=int, default=128, help="default 128")
    p.add_argument("--gen-len", type=int, default=128, help="default 128")
    p.add_argument("--batch", type=int, default=1, help="default 1")
    p.add_argument("--warmup", type=int, default=1, help="default 1")
    p.add_argument("--repeat", type=int, default=3, help="default 3")
    p.add_argument("--compare", choices=["torch"],
                   help="also run scr_ref's loop in this process and print ratios")
    p.add_argument("--sweep", metavar="L1,L2,...",
                   help="context lengths to sweep (TTFT and ITL at each)")
    p.add_argument("--plot", type=Path, metavar="FILE.png",
                   help="with --sweep: a PNG of latency against context (needs matplotlib)")
    p.add_argument("--scr-overhead", action="store_true",
                   help="the same weights with and without SCR layers (needs torch): ratios")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = dict(device=args.device, threads=args.threads, prompt_len=args.prompt_len,
                    gen_len=args.gen_len, batch=args.batch, warmup=args.warmup,
                    repeat=args.repeat)
    if args.scr_overhead:
        from scredge.bench.scr_overhead import scr_overhead

        report = scr_overhead(args.folder, **settings)
        print_json_or_lines(report, report["lines"], args.json)
        return 0
    from scredge.bench.report import parse_sweep, run_bench

    check_cuda_graph(args)
    result, lines = run_bench(args.folder, backend=args.backend, cuda_graph=args.cuda_graph,
                              compare_torch=args.compare == "torch",
                              sweep=parse_sweep(args.sweep), plot=args.plot, **settings)
    print_json_or_lines(result, lines, args.json)
    return 0
