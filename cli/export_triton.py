"""`scredge export-triton`: a Triton Inference Server model repository (Python backend)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add(sub) -> None:
    p = sub.add_parser(
        "export-triton", help="write a Triton Inference Server model repository (Python backend)",
        description="A model repository Triton's Python backend serves: config.pbtxt "
                    "(decoupled, streamed responses), model.py (scredge's runtime and "
                    "batching) and a verified copy of the artifact folder.")
    p.add_argument("folder", type=Path, metavar="FOLDER",
                   help="an artifact folder written by `scredge export`")
    p.add_argument("out", type=Path, metavar="OUT", help="the repository to write (new or empty)")
    p.add_argument("--model-name", help="the model's name in Triton (default: FOLDER's name)")
    p.add_argument("--instances", type=int, default=1, help="model instances (default 1)")
    p.add_argument("--kind", default="cpu", choices=["cpu", "gpu"],
                   help="instance kind: KIND_CPU (default) or KIND_GPU")
    p.add_argument("--max-batch", type=int, default=16, help="rows decoded together (16)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting for a row, per instance; past it refused (64)")
    p.add_argument("--timeout", type=float, default=600.0, help="per request, seconds (600)")
    p.add_argument("--max-context", type=int, help="refuse prompt + max_tokens beyond this")
    p.add_argument("--backend", default="auto", choices=["auto", "ort", "trt"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scredge.serve.triton_export import export_triton

    model = export_triton(args.folder, args.out, model_name=args.model_name,
                          instances=args.instances, kind=args.kind, max_batch=args.max_batch,
                          max_queue=args.max_queue, timeout_s=args.timeout,
                          max_context=args.max_context, backend=args.backend,
                          device=args.device)
    print(f"wrote {model}: config.pbtxt, 1/model.py, 1/artifact/")
    print(f"serve it: tritonserver --model-repository {args.out.absolute()} "
          "(Triton's Python needs `pip install 'scredge[ort]'`)")
    return 0
