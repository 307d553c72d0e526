"""`scredge parity`: a backend against the reference, tier by tier (SCR_SPEC section 5)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scredge.cli.common import CUDA_GRAPH_HELP, add_folder, check_cuda_graph

# flag -> (Thresholds override keyword, help)
_OVERRIDES = (("--op-tol", "op_abs", "op tier max error / scale"),
              ("--cosine", "layer_cosine", "layer tier minimum cosine"),
              ("--norm-tol", "layer_norm_tol", "layer tier max |norm ratio - 1|"),
              ("--max-abs", "max_abs", "logits max abs diff"),
              ("--kl", "kl", "logits max KL"),
              ("--top1", "top1", "logits minimum top-1 agreement (0..1)"))


def add(sub) -> None:
    p = sub.add_parser("parity", help="check a backend against the reference, tier by tier")
    add_folder(p)
    p.add_argument("--record", action="store_true",
                   help="run scr_ref (needs torch) and store parity/golden.npz first")
    p.add_argument("--live", action="store_true",
                   help="compare with scr_ref run now (needs torch) instead of the golden file")
    p.add_argument("--backend", default="ort", choices=["ort", "trt"])
    p.add_argument("--cuda-graph", action="store_true", help=CUDA_GRAPH_HELP)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", choices=["float32", "float16"],
                   help="thresholds of this dtype (default: the artifact's)")
    p.add_argument("--dump", type=Path, metavar="DIR",
                   help="write the first diverging call's inputs for polygraphy run")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    for flag, dest, what in _OVERRIDES:
        p.add_argument(flag, dest=dest, type=float, help=f"override the {what}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scredge.parity.run import check

    check_cuda_graph(args)
    result = check(args.folder, backend=args.backend, device=args.device, record=args.record,
                   live=args.live, dtype=args.dtype, cuda_graph=args.cuda_graph,
                   dump=args.dump, overrides={d: getattr(args, d) for _, d, _ in _OVERRIDES},
                   log=lambda s: print(s, flush=True))
    print(json.dumps(result.to_json(), indent=2) if args.json else result.table())
    return 0 if result.passed else 1
