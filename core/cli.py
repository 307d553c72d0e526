"""The `scredge` command: thin subcommands over library functions.

A subcommand is listed only once it works. User errors (ScredgeError) print
their message and exit with status 2; nothing else is caught.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import scredge
from scredge.config import PRESETS, SCRConfig
from scredge.deps import available, require
from scredge.errors import ScredgeError
from scredge.ref.train_config import defaults as train_defaults

OPTIONAL_MODULES = ("numpy", "torch", "safetensors", "onnx", "onnxscript", "onnxruntime",
                    "tensorrt", "tensorrt_rtx", "transformers")


def _config_from_args(args: argparse.Namespace) -> SCRConfig:
    if args.config is not None:
        return SCRConfig.load(args.config)
    return SCRConfig.preset(args.preset)


# ---- info ---------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from importlib.metadata import PackageNotFoundError, version

    def module_version(mod: str) -> str | None:
        if not available(mod):
            return None
        dist = {"tensorrt_rtx": "tensorrt-rtx-cu13"}.get(mod, mod)
        try:
            return version(dist)
        except PackageNotFoundError:
            return "installed"

    report = {
        "scredge": scredge.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "modules": {m: module_version(m) for m in OPTIONAL_MODULES},
        "presets": {name: cfg.to_dict() for name, cfg in PRESETS.items()},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"scredge {report['scredge']} on Python {report['python']} ({report['machine']})")
    for mod, ver in report["modules"].items():
        print(f"  {mod:<13} {ver or 'not installed'}")
    print("presets: " + ", ".join(PRESETS))
    return 0


# ---- init ---------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    """Write a seeded reference checkpoint and its config next to it."""
    config = _config_from_args(args)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ScredgeError(
            "--out must name a .safetensors file", received=str(out), expected="PATH.safetensors"
        )
    config_path = out.with_suffix(".config.json")
    for p in (out, config_path):
        if p.exists() and not args.force:
            raise ScredgeError(
                "output file exists", received=str(p), fix="pass --force to replace it"
            )
    if not out.parent.is_dir():
        raise ScredgeError(
            "output folder does not exist", received=str(out.parent), fix="create it first"
        )
    from scredge.ref import build_model, save_checkpoint

    model = build_model(config, args.seed, gamma=args.gamma)
    save_checkpoint(model, out)
    config_path.write_text(json.dumps({"model": config.to_dict()}, indent=2) + "\n")
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({n:,} parameters, seed {args.seed}) and {config_path}")
    return 0


# ---- export -------------------------------------------------------------------
def parse_scr_layers(text: str | None, n_layers: int | None) -> tuple[int, ...] | None:
    """--scr-layers for a model of n_layers: absent -> None (keep the source's own), 'all'
    -> every layer, 'none' -> (), '0,2' -> (0, 2). n_layers None (not known yet: a Llama
    folder) turns 'all' into None, the source's own default of every layer."""
    if text is None:
        return None
    if text == "all":
        return None if n_layers is None else tuple(range(n_layers))
    if text == "none":
        return ()
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise ScredgeError("invalid --scr-layers", received=repr(text),
                           expected="'all', 'none' or comma-separated layer indices like 0,2,3"
                           ) from None


def cmd_export(args: argparse.Namespace) -> int:
    from scredge.export import sources
    from scredge.export.pipeline import check_options, export_artifact

    out = Path(args.out)
    parse_scr_layers(args.scr_layers, None)  # its syntax, before anything is loaded
    # refuse bad options before building or loading anything
    check_options(out.absolute(), args.dtype, args.opset, args.force, window=None)
    if args.pretrained is not None:
        if args.scr_layers is not None or args.weights is not None or args.config is not None:
            raise ScredgeError("--pretrained takes no --config, --weights or --scr-layers",
                               received="--pretrained with one of them",
                               fix="drop them: the shipped checkpoint fixes its own config")
        src = sources.from_pretrained(args.pretrained)
    elif args.from_llama is not None:
        src = sources.from_llama(args.from_llama, parse_scr_layers(args.scr_layers, None),
                                 seed=args.seed)
    elif args.weights is not None:
        src = sources.from_files(args.config, args.weights)
        layers = parse_scr_layers(args.scr_layers, src.model.config.n_layers)
        if layers is not None and layers != src.model.config.scr_layers:
            raise ScredgeError("--scr-layers differs from the checkpoint's SCR layers",
                               received=list(layers),
                               expected=list(src.model.config.scr_layers),
                               fix="drop --scr-layers; a checkpoint's SCR layers are fixed")
    elif args.config is not None:
        config = SCRConfig.load(args.config)
        src = sources.from_config(config, args.seed,
                                  parse_scr_layers(args.scr_layers, config.n_layers),
                                  {"kind": "config", "config": str(args.config),
                                   "seed": args.seed})
    else:
        src = sources.from_preset(args.preset, args.seed, parse_scr_layers(
            args.scr_layers, SCRConfig.preset(args.preset).n_layers))
    path = export_artifact(src.model, out, dtype=args.dtype, opset=args.opset,
                           force=args.force, source=src.description,
                           log=lambda s: print(s, flush=True))
    print(f"wrote {path}")
    return 0


# ---- generate / build ---------------------------------------------------------------
def cmd_generate(args: argparse.Namespace) -> int:
    from scredge.runtime import Engine

    engine = Engine.load(args.folder, backend=args.backend, cuda_graph=args.cuda_graph)
    kwargs = dict(max_new_tokens=args.max_new_tokens,
                  temperature=0.0 if args.greedy else args.temperature, top_k=args.top_k,
                  top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                  stop=args.stop or ())
    if args.stream and not args.json:
        print(args.prompt, end="", flush=True)
        for piece in engine.stream(args.prompt, **kwargs):
            print(piece, end="", flush=True)
        print()
        return 0
    result = engine.generate(args.prompt, **kwargs)
    if args.json:
        print(json.dumps({"ids": result.ids, "text": result.text, "backend": engine.backend,
                          "finish_reason": result.finish_reason,
                          "prompt_tokens": result.prompt_tokens, "timing": result.timing}))
    else:
        print(args.prompt + result.text)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from scredge.runtime.loaders import open_artifact
    from scredge.runtime.trt_build import pick_backend

    def log(line: str) -> None:
        print(line, flush=True)

    backend = pick_backend(args.backend)
    trt_only = {"--no-plugin": args.no_plugin, "--max-prefill": args.max_prefill,
                "--max-context": args.max_context, "--timing-cache": args.timing_cache}
    if backend == "ort":
        given = [k for k, v in trt_only.items() if v not in (None, False)]
        if given:
            raise ScredgeError("these options are for TensorRT builds", received=given,
                               expected=f"--backend tensorrt or tensorrt_rtx "
                                        f"(--backend {args.backend} chose ort)")
        from scredge.runtime.build import build_ort

        path, _ = build_ort(open_artifact(args.folder), device=args.device, log=log)
        print(f"wrote {path} (onnxruntime-optimised graph, listed in manifest.json)")
        return 0
    from scredge.runtime.trt_build import build_trt

    path, entry = build_trt(open_artifact(args.folder), backend, no_plugin=args.no_plugin,
                            max_batch=args.max_batch, max_prefill=args.max_prefill,
                            max_context=args.max_context, timing_cache=args.timing_cache,
                            log=log)
    print(f"wrote {path} ({entry['backend']} {entry['tensorrt']}, {entry['plugin_mode']} mode,"
          f" listed in manifest.json)")
    return 0


# ---- parity -----------------------------------------------------------------------
def cmd_parity(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from scredge.runtime.golden import GOLDEN_FILE, Golden
    from scredge.runtime.loaders import load_ort, open_artifact
    from scredge.runtime.parity import run_parity
    from scredge.tiers import tier_thresholds

    _check_cuda_graph(args)
    if args.backend == "trt" and args.dump is not None:
        raise ScredgeError("--dump replays a call in onnxruntime: it needs --backend ort",
                           received="--backend trt --dump", expected="--backend ort --dump DIR")
    artifact = open_artifact(args.folder)
    if args.record:
        from scredge.export.golden import record_into

        print(f"recording the reference (scr_ref) into {args.folder / GOLDEN_FILE} ...",
              flush=True)
        artifact = record_into(artifact)  # its manifest now lists the golden file
    if args.live:
        from scredge.export.golden import record_golden

        golden = record_golden(artifact)
    else:
        golden = Golden.load(args.folder / GOLDEN_FILE)
    th = tier_thresholds(args.dtype or artifact.dtype)
    th = replace(th, **{k: v for k, v in (("op_abs", args.op_tol),
                                          ("layer_cosine", args.cosine),
                                          ("layer_norm_tol", args.norm_tol)) if v is not None})
    if args.kl is not None or args.max_abs is not None or args.top1 is not None:
        lt = th.logits
        th = replace(th, logits=replace(lt, kl=args.kl if args.kl is not None else lt.kl,
                                        max_abs=args.max_abs if args.max_abs is not None
                                        else lt.max_abs,
                                        top1=args.top1 if args.top1 is not None else lt.top1))
    if args.backend == "trt":
        from scredge.runtime.parity_runner import runner_parity
        from scredge.runtime.trt_loader import load_trt_runner

        result = runner_parity(artifact, golden,
                               load_trt_runner(artifact, cuda_graph=args.cuda_graph), th)
    else:
        runner = load_ort(artifact, device=args.device)
        result = run_parity(artifact, golden, runner, th, device=runner.device, dump=args.dump)
    print(json.dumps(result.to_json(), indent=2) if args.json else result.table())
    return 0 if result.passed else 1


# ---- bench ------------------------------------------------------------------------
_CUDA_GRAPH_HELP = "with --backend trt: replay the steady decode step from CUDA graphs"


def _check_cuda_graph(args: argparse.Namespace) -> None:
    if args.cuda_graph and args.backend != "trt":
        raise ScredgeError("--cuda-graph is a TensorRT runner option",
                           received=f"--backend {args.backend} --cuda-graph",
                           expected="--backend trt --cuda-graph",
                           fix="add --backend trt (needs an engine from `scredge build`), or "
                               "drop --cuda-graph")


def cmd_bench(args: argparse.Namespace) -> int:
    from scredge.runtime import bench as b
    from scredge.runtime.loaders import load_ort, open_artifact

    for name in ("prompt_len", "gen_len", "batch", "repeat"):
        if getattr(args, name) < 1:
            raise ScredgeError(f"--{name.replace('_', '-')} must be >= 1",
                               received=getattr(args, name))
    if args.scr_overhead:
        from scredge.runtime.scr_overhead import scr_overhead

        report = scr_overhead(args.folder, args)
        print(json.dumps(report, indent=2) if args.json else "\n".join(report["lines"]))
        return 0
    _check_cuda_graph(args)
    artifact = open_artifact(args.folder)
    if args.backend == "trt":
        from scredge.runtime.trt_loader import load_trt_runner

        runner = load_trt_runner(artifact, cuda_graph=args.cuda_graph)
    else:
        runner = load_ort(artifact, device=args.device, threads=args.threads)
    settings = dict(gen_len=args.gen_len, batch=args.batch, warmup=args.warmup,
                    repeat=args.repeat)
    result = b.bench(runner, prompt_len=args.prompt_len, **settings)
    lines = b.summary_lines(result)
    if args.cuda_graph:  # the same engine uncaptured, in this run: the ratio is the gain
        plain = b.bench(runner.without_cuda_graph(), prompt_len=args.prompt_len, **settings)
        result["cuda_graph_compare"] = {
            "uncaptured": plain, "decode_ratio": result["decode_tokens_per_s"]
            / plain["decode_tokens_per_s"]}
        lines.append(f"  CUDA graphs: {result['cuda_graph']}; decode "
                     f"{result['cuda_graph_compare']['decode_ratio']:.2f}x the uncaptured "
                     f"engine ({plain['decode_tokens_per_s']:.1f} tok/s)")
    if args.compare == "torch":
        from scredge.ref import load_checkpoint

        model = load_checkpoint(artifact.folder / "model.safetensors", artifact.config)
        ref = b.measure(b.torch_stepper(model), args.prompt_len,
                        vocab_size=artifact.config.vocab_size, **settings)
        result["compare"] = {"torch": ref, "ratios": {
            "decode_tokens_per_s": result["decode_tokens_per_s"] / ref["decode_tokens_per_s"],
            "ttft": ref["ttft_s"] / result["ttft_s"]}}
        lines.append(f"  vs scr_ref (torch, same process): decode "
                     f"{result['compare']['ratios']['decode_tokens_per_s']:.2f}x, TTFT "
                     f"{result['compare']['ratios']['ttft']:.2f}x faster "
                     f"(torch decode {ref['decode_tokens_per_s']:.1f} tok/s)")
    if args.sweep:
        result["sweep"] = b.sweep(runner, [int(x) for x in args.sweep.split(",")],
                                  gen_len=min(args.gen_len, 32), repeat=args.repeat)
        for row in result["sweep"]:
            lines.append(f"  context {row['context']:6d}: TTFT {row['ttft_s'] * 1e3:8.2f} ms,"
                         f" ITL p50 {row['itl_p50_s'] * 1e3:.3f} ms")
        if args.plot:
            b.plot_sweep(result["sweep"], args.plot)
            lines.append(f"  plot: {args.plot}")
    print(json.dumps(result, indent=2) if args.json else "\n".join(lines))
    return 0


# ---- train ----------------------------------------------------------------------------
# TrainConfig fields settable from the command line: (flag, type, help)
_TRAIN_FLAGS = (
    ("steps", int, "optimizer steps"),
    ("batch_size", int, "windows per step"),
    ("seq_len", int, "bytes per window"),
    ("lr", float, "peak learning rate"),
    ("min_lr", float, "learning rate at the end of the cosine decay"),
    ("warmup_steps", int, "linear warmup steps (default: min(100, steps // 10))"),
    ("weight_decay", float, "AdamW weight decay on matrices"),
    ("grad_clip", float, "max global gradient norm, 0 = off"),
    ("seed", int, "seed of the initial weights and of batch sampling"),
    ("eval_every", int, "validate every N steps (and at 0 and the end)"),
    ("eval_batches", int, "validation batches (fixed windows)"),
    ("checkpoint_every", int, "write last.pt every N steps (and at the end)"),
    ("log_every", int, "a progress line every N steps"),
)


def _train_data(args: argparse.Namespace) -> tuple[bytes, bytes, dict]:
    """(train bytes, validation bytes, a description for the log) from --data or --corpus."""
    from scredge.ref import corpus

    if args.data is not None:
        train, val = corpus.split(corpus.load_text(args.data), args.val_fraction)
        return train, val, {"kind": "text", "path": str(Path(args.data).absolute())}
    if args.corpus == "longrange":
        gap = _int_pair(args.recall_gap, "--recall-gap")
        full = corpus.LongRangeCorpus.generate(seed=args.corpus_seed, n_docs=args.docs,
                                               doc_bytes=args.doc_bytes, gap_min=gap[0],
                                               gap_max=gap[1])
        train, val = full.split(args.val_fraction)
        return train.data, val.data, {"kind": "longrange", **full.describe()}
    train, val = corpus.split(corpus.prose_corpus(), args.val_fraction)
    return train, val, {"kind": "prose", "source": "pydoc_data.topics",
                        "python": platform.python_version()}


def _int_pair(text: str, flag: str) -> tuple[int, int]:
    try:
        a, b = (int(t) for t in text.split(","))
    except ValueError:
        raise ScredgeError(f"invalid {flag}", received=repr(text),
                           expected="two integers MIN,MAX like 300,600") from None
    return a, b


def cmd_train(args: argparse.Namespace) -> int:
    """Train a byte-level model; progress lines on stdout, results in --out."""
    from scredge.ref.train_config import TrainConfig

    config = _config_from_args(args)
    layers = parse_scr_layers(args.scr_layers, config.n_layers)
    if layers is not None:
        config = config.with_(scr_layers=layers)
    if args.window is not None:
        config = config.with_(window=None if args.window == "none" else _window(args.window))
    settings = {name: getattr(args, name) for name, _, _ in _TRAIN_FLAGS
                if getattr(args, name) is not None}
    cfg = TrainConfig(**settings)  # refuses bad settings before torch or data are loaded
    torch = require("torch")
    if args.threads is not None:
        if args.threads < 1:
            raise ScredgeError("--threads must be >= 1", received=args.threads)
        torch.set_num_threads(args.threads)
    from scredge.ref.train import MODEL_FILE, train

    train_bytes, val_bytes, source = _train_data(args)
    if source["kind"] == "longrange" and cfg.seq_len <= source["gap_max"]:
        print(f"note: --seq-len {cfg.seq_len} is not longer than the recall gap "
              f"({source['gap_min']}..{source['gap_max']} bytes): few or no training windows "
              f"hold both a key and its recall", flush=True)
    kind = (f"SCR layers {list(config.scr_layers)}" if config.scr_layers
            else "a plain transformer (no SCR layers)")
    print(f"training {kind}, window {config.window}, on {source['kind']} data: "
          f"{len(train_bytes):,} train / {len(val_bytes):,} val bytes", flush=True)
    result = train(config, cfg, train_bytes, val_bytes, args.out, resume=args.resume,
                   progress=lambda line: print(line, flush=True), device=args.device,
                   stop_at=args.stop_at, ignore_memory_check=args.ignore_memory_check,
                   meta={"command": ["scredge", *getattr(args, "argv", [])], "data": source})
    if result.finished:
        log = result.log
        print(f"wrote {Path(args.out) / MODEL_FILE} (final val loss "
              f"{log['final_val_loss']:.4f}, {log['wall_time_s']:.0f} s) and train_log.json")
    return 0


def _window(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ScredgeError("invalid --window", received=repr(text),
                           expected="a positive integer, or 'none' for full causal attention"
                           ) from None


# ---- parser ---------------------------------------------------------------------
def _add_model_source(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", default="tiny",
                   help=f"named config: {', '.join(PRESETS)} (default tiny)")
    g.add_argument("--config", type=Path,
                   help="a config JSON file (bare fields or {\"model\": {...}})")


def cmd_serve(args: argparse.Namespace) -> int:
    from scredge.serve import serve

    return serve(args.folder, args.host, args.port, max_batch=args.max_batch,
                 max_queue=args.max_queue, timeout_s=args.timeout, max_context=args.max_context,
                 shutdown_grace_s=args.shutdown_grace, model_name=args.model_name,
                 backend=args.backend)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scredge",
        description="SCR language models from PyTorch to ONNX Runtime and TensorRT.",
    )
    parser.add_argument("--version", action="version", version=f"scredge {scredge.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("info", help="versions, installed backends and presets")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("init", help="write a seeded reference checkpoint (needs the ref extra)")
    _add_model_source(p)
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    p.add_argument("--gamma", type=float, default=0.1,
                   help="initial SCR scale; 0 makes SCR an exact identity (default 0.1)")
    p.add_argument("--out", required=True, help="checkpoint path, ending in .safetensors")
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("export", help="export a model to a verified ONNX artifact folder")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default="tiny",
                     help=f"seeded model of a named config: {', '.join(PRESETS)} (default tiny)")
    src.add_argument("--pretrained", metavar="NAME",
                     help="a checkpoint shipped with scredge and trained by `scredge train`: "
                          "tiny (prose)")
    src.add_argument("--from-llama", type=Path, metavar="DIR",
                     help="a local Hugging Face Llama/Mistral folder (config.json + safetensors); "
                          "SCR layers are added with gamma = 0")
    p.add_argument("--config", type=Path,
                   help="a config JSON file (seeded weights, or the config of --weights)")
    p.add_argument("--weights", type=Path, help="a .safetensors checkpoint")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    p.add_argument("--dtype", default="float32", help="float32 (default) or float16")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 17 (default 18)")
    p.add_argument("--scr-layers", help="'all', 'none', or indices like 0,2 (default: the "
                                        "preset's or config's; every layer for --from-llama)")
    p.add_argument("--out", required=True, help="the artifact folder to create")
    p.add_argument("--force", action="store_true", help="replace an existing folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("generate", help="generate text from an artifact folder (torch-free)")
    p.add_argument("folder", type=Path, help="an artifact folder written by `scredge export`")
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--max-new-tokens", type=int, default=128, help="default 128")
    p.add_argument("--greedy", action="store_true", help="argmax decoding (temperature 0)")
    p.add_argument("--temperature", type=float, default=1.0, help="default 1.0")
    p.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1] (1 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    p.add_argument("--stop", action="append", help="a stop string (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--backend", default="auto", choices=["auto", "ort", "trt"])
    p.add_argument("--cuda-graph", action="store_true", help=_CUDA_GRAPH_HELP)
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: ids, text, backend, timing")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("build", help="build the best engine for this machine into the folder")
    p.add_argument("folder", type=Path, help="an artifact folder written by `scredge export`")
    p.add_argument("--backend", default="auto",
                   choices=["auto", "ort", "tensorrt", "tensorrt_rtx"],
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
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("parity", help="check a backend against the reference, tier by tier")
    p.add_argument("folder", type=Path, help="an artifact folder written by `scredge export`")
    p.add_argument("--record", action="store_true",
                   help="run scr_ref (needs torch) and store parity/golden.npz first")
    p.add_argument("--live", action="store_true",
                   help="compare with scr_ref run now (needs torch) instead of the golden file")
    p.add_argument("--backend", default="ort", choices=["ort", "trt"])
    p.add_argument("--cuda-graph", action="store_true", help=_CUDA_GRAPH_HELP)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", choices=["float32", "float16"],
                   help="thresholds of this dtype (default: the artifact's)")
    p.add_argument("--dump", type=Path, metavar="DIR",
                   help="write the first diverging call's inputs for polygraphy run")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    for flag, what in (("--op-tol", "op tier max error / scale"),
                       ("--cosine", "layer tier minimum cosine"),
                       ("--norm-tol", "layer tier max |norm ratio - 1|"),
                       ("--max-abs", "logits max abs diff"), ("--kl", "logits max KL"),
                       ("--top1", "logits minimum top-1 agreement (0..1)")):
        p.add_argument(flag, type=float, help=f"override the {what}")
    p.set_defaults(func=cmd_parity)

    p = sub.add_parser("train", help="train a byte-level model on text (needs the ref extra)")
    _add_model_source(p)
    p.add_argument("--scr-layers", help="'all', 'none', or indices like 0,2 (default: the "
                                        "config's)")
    p.add_argument("--window", help="attention window in tokens, or 'none' (default: the "
                                    "config's)")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--data", type=Path, metavar="PATH",
                      help="a text file, or a folder of *.txt / *.md files (recursive)")
    data.add_argument("--corpus", choices=["prose", "longrange"], default="prose",
                      help="built-in data when --data is absent: prose (Python's docs, "
                           "default) or longrange (seeded key/recall documents)")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="tail of the data kept for validation (default 0.05)")
    p.add_argument("--corpus-seed", type=int, default=0, help="longrange: seed (default 0)")
    p.add_argument("--docs", type=int, default=1000, help="longrange: documents (default 1000)")
    p.add_argument("--doc-bytes", type=int, default=4096,
                   help="longrange: bytes per document (default 4096)")
    p.add_argument("--recall-gap", default="300,600", metavar="MIN,MAX",
                   help="longrange: bytes from a key mention to the next recall (default "
                        "300,600)")
    for name, kind, text in _TRAIN_FLAGS:
        suffix = "" if "default" in text else f" (default {train_defaults()[name]})"
        p.add_argument("--" + name.replace("_", "-"), type=kind, help=text + suffix)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int,
                   help="CPU threads for torch (default: torch's choice); on a shared machine "
                        "fewer threads than busy cores avoids stalls; keep it when resuming")
    p.add_argument("--out", required=True, type=Path,
                   help="run folder: last.pt, model.safetensors, train_log.json")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--stop-at", type=int, metavar="STEP",
                   help="checkpoint and stop after this step; continue later with --resume")
    p.add_argument("--ignore-memory-check", action="store_true",
                   help="train even when the memory estimate exceeds the available memory")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bench", help="latency of real generation: TTFT, ITL percentiles, tok/s")
    p.add_argument("folder", type=Path, help="an artifact folder written by `scredge export`")
    p.add_argument("--backend", default="ort", choices=["ort", "trt"])
    p.add_argument("--cuda-graph", action="store_true",
                   help=_CUDA_GRAPH_HELP + "; also times the same engine without them")
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
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server, continuous batching")
    p.add_argument("folder", type=Path, help="an artifact folder written by `scredge export`")
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
    p.add_argument("--model-name", help="the model id clients send (default: folder name)")
    p.add_argument("--backend", default="auto", choices=["auto", "ort", "trt"])
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by `train`
    try:
        return args.func(args)
    except ScredgeError as exc:
        print(f"scredge {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
