"""`scredge serve`: an OpenAI-compatible HTTP server with continuous batching."""

from __future__ import annotations

import argparse

from scredge.cli.common import add_folder
from scredge.errors import ScredgeError
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
    ray = p.add_argument_group("Ray Serve (the `ray` extra): the same server on replicas")
    ray.add_argument("--ray", action="store_true",
                     help="serve on Ray Serve replicas, each with its own engine and batching")
    scale = ray.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=int, help="a fixed number of replicas (default 1)")
    scale.add_argument("--autoscale", metavar="MIN:MAX",
                       help="autoscale between MIN and MAX replicas, aiming at a full batch each")
    ray.add_argument("--ray-address", metavar="ADDR",
                     help="join this Ray cluster (HOST:PORT of its head, or auto) instead of "
                          "starting a local one")
    ray.add_argument("--replica-cpus", type=float, help="Ray CPUs per replica (default 1)")
    ray.add_argument("--replica-gpus", type=float,
                     help="Ray GPUs per replica (default 0; 1: one replica per GPU)")
    p.set_defaults(func=run)


RAY_ONLY = ("replicas", "autoscale", "ray_address", "replica_cpus", "replica_gpus")


def run(args: argparse.Namespace) -> int:
    given = [f"--{n.replace('_', '-')}" for n in RAY_ONLY if getattr(args, n) is not None]
    if given and not args.ray:
        raise ScredgeError(f"{', '.join(given)} only apply with --ray", received=" ".join(given),
                           fix=f"add --ray, or drop {', '.join(given)}")
    server = dict(max_batch=args.max_batch, max_queue=args.max_queue, timeout_s=args.timeout,
                  max_context=args.max_context, shutdown_grace_s=args.shutdown_grace,
                  model_name=args.model_name, backend=args.backend,
                  speculative=args.speculative, speculative_k=args.speculative_k,
                  max_body_bytes=args.max_body_bytes)
    if args.ray:
        from scredge.serve.ray_cluster import serve_on_ray
        from scredge.serve.ray_deploy import RayScale, parse_autoscale

        scale = RayScale(1 if args.replicas is None else args.replicas,
                         None if args.autoscale is None else parse_autoscale(args.autoscale),
                         1.0 if args.replica_cpus is None else args.replica_cpus,
                         0.0 if args.replica_gpus is None else args.replica_gpus)
        return serve_on_ray(args.folder, args.host, args.port, scale=scale,
                            ray_address=args.ray_address, **server)
    from scredge.serve import serve

    return serve(args.folder, args.host, args.port, **server)
