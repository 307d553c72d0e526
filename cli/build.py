"""`scredge build`: the best engine for this machine, into the artifact folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from scredge.builder import BUILD_TARGETS
from scredge.cli.common import add_folder


def add(sub) -> None:
    p = sub.add_parser("build", help="build the best engine for this machine into the folder")
    add_folder(p)
    p.add_argument("--backend", default="auto", choices=list(BUILD_TARGETS),
                   help="auto (default): TensorRT when tensorrt or tensorrt_rtx imports and a "
                        "GPU is present, else ort; ort: save the onnxruntime-optimised graph; "
                        "tensorrt / tensorrt_rtx: build a TensorRT engine")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="ort only. auto: CUDA when onnxruntime-gpu sees a GPU, else CPU")
    p.add_argument("--no-plugin", action="store_true",
                   help="TensorRT: run Realign as standard layers instead of the plugin")
    p.add_argument("--max-batch", type=int, default=4, help="TensorRT: largest batch (default 4)")
    p.add_argument("--max-prefill", type=int,
                   help="TensorRT: longest prompt in one call (default 512, or --max-context "
                        "when smaller)")
    p.add_argument("--max-context", type=int,
                   help="TensorRT, models with window = null only: most tokens a sequence "
                        "may reach (required there)")
    p.add_argument("--timing-cache", type=Path, metavar="PATH",
                   help="TensorRT: timing cache file (default ~/.cache/scredge/timing/"
                        "<backend>-<version>-<gpu>.cache, or under $SCREDGE_CACHE_DIR)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scredge.builder import build

    path, what = build(args.folder, args.backend, device=args.device, no_plugin=args.no_plugin,
                       max_batch=args.max_batch, max_prefill=args.max_prefill,
                       max_context=args.max_context, timing_cache=args.timing_cache,
                       log=lambda line: print(line, flush=True))
    print(f"wrote {path} ({what}, listed in manifest.json)")
    return 0
