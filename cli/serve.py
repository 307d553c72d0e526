"""`scredge serve`: an OpenAI-compatible HTTP server with continuous batching."""

from __future__ import annotations

import argparse

from scredge.cli.common import add_folder
from scredge.limits import MAX_REQUEST_BODY_BYTES


def add(sub) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server, continuous batching")
    add_folder(p)
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="default 8000 (0: a free port)")
    p.add_argument("--max-batch", type=int, default=16, help="rows decoded together (16)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting for a row; past it 429 (64)")
    p.add_argument("--timeout", type=float, default=600.0, help="per request, seconds (600)")
    p.add_argument("--max-context", type=int,
                   help="refuse prompt + max_tokens beyond this many tokens (default: none)")
    p.add_argument("--shutdown-grace", type=float, default=30.0,
                   help="seconds in-flight requests get to finish on SIGINT/SIGTERM (30)")
    p.add_argument("--max-body-bytes", type=int, default=MAX_REQUEST_BODY_BYTES,
                   help=f"larger request bodies are refused with 413 ({MAX_REQUEST_BODY_BYTES})")
    p.add_argument("--model-name", help="the model id clients send (default: folder name)")
    p.add_argument("--backend", default="auto", choices=["auto", "ort", "trt"])
    p.add_argument("--speculative", metavar="ngram|FOLDER",
                   help="speculative decoding for every request: 'ngram' (prompt lookup) or "
                        "a draft model's artifact folder (same tokenizer)")
    p.add_argument("--speculative-k", type=int, default=4,
                   help="tokens proposed per step (default 4)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scredge.serve import serve

    return serve(args.folder, args.host, args.port, max_batch=args.max_batch,
                 max_queue=args.max_queue, timeout_s=args.timeout, max_context=args.max_context,
                 shutdown_grace_s=args.shutdown_grace, model_name=args.model_name,
                 backend=args.backend, speculative=args.speculative,
                 speculative_k=args.speculative_k, max_body_bytes=args.max_body_bytes)
