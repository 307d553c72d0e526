"""`scredge train`: a byte-level model on text (needs the ref extra)."""

from __future__ import annotations

import argparse
from pathlib import Path

from scredge.cli.common import add_model_source, config_from_args
from scredge.config import parse_scr_layers, parse_window
from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.ref.train_config import defaults as train_defaults

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


def add(sub) -> None:
    p = sub.add_parser("train", help="train a model on text, from scratch (byte-level) or from "
                                     "a pretrained one (--init); needs the ref extra")
    add_model_source(p, preset_default=None)
    p.add_argument("--init", type=Path, metavar="DIR",
                   help="start from a pretrained model: a Hugging Face Llama/Mistral/Qwen2 "
                        "folder (as export --from-llama; its tokenizer.json encodes the data and "
                        "is kept in --out), a scredge run folder or .safetensors checkpoint; SCR "
                        "layers it lacks are added with gamma = 0")
    p.add_argument("--trainable", choices=["all", "scr"], default="all",
                   help="all (default) or scr: only the SCR parameters train, the --init "
                        "model's weights stay frozen bit for bit")
    p.add_argument("--scr-layers", help="'all', 'none', or indices like 0,2 (default: the "
                                        "config's; with --init the source's, every layer for "
                                        "a Hugging Face folder)")
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Progress lines on stdout, results in --out."""
    from scredge.ref.train_config import TrainConfig

    settings = {name: getattr(args, name) for name, _, _ in _TRAIN_FLAGS
                if getattr(args, name) is not None}
    cfg = TrainConfig(**settings)  # refuses bad settings before torch or data are loaded
    init = None
    if args.init is None:
        config = config_from_args(args)
        layers = parse_scr_layers(args.scr_layers, config.n_layers)
        if layers is not None:
            config = config.with_(scr_layers=layers)
        if args.window is not None:
            config = config.with_(window=parse_window(args.window))
    torch = require("torch")
    if args.threads is not None:
        if args.threads < 1:
            raise ScredgeError("--threads must be >= 1", received=args.threads)
        torch.set_num_threads(args.threads)
    from scredge.ref.corpus import training_data
    from scredge.ref.train import MODEL_FILE, train
    from scredge.ref.train_init import check_trainable, encode, init_for_training

    if args.init is not None:
        explicit = config_from_args(args) if (args.preset or args.config) else None
        init = init_for_training(args.init, args.scr_layers, args.window, explicit, cfg.seed)
        config = init.config
    check_trainable(args.trainable, config, init)

    train_bytes, val_bytes, source = training_data(
        data=args.data, corpus=args.corpus, val_fraction=args.val_fraction,
        corpus_seed=args.corpus_seed, docs=args.docs, doc_bytes=args.doc_bytes,
        recall_gap=args.recall_gap)
    tokenizer = init.tokenizer if init is not None else None
    train_data = encode(train_bytes, tokenizer, init, config.vocab_size)
    val_data = encode(val_bytes, tokenizer, init, config.vocab_size)
    if source["kind"] == "longrange" and cfg.seq_len <= source["gap_max"]:
        print(f"note: --seq-len {cfg.seq_len} is not longer than the recall gap "
              f"({source['gap_min']}..{source['gap_max']} bytes): few or no training windows "
              f"hold both a key and its recall", flush=True)
    kind = (f"SCR layers {list(config.scr_layers)}" if config.scr_layers
            else "a plain transformer (no SCR layers)")
    unit = "bytes" if tokenizer is None else "tokens"
    start = "" if init is None else f" from {args.init} ({args.trainable} trainable)"
    print(f"training {kind}{start}, window {config.window}, on {source['kind']} data: "
          f"{len(train_data):,} train / {len(val_data):,} val {unit}", flush=True)
    result = train(config, cfg, train_data, val_data, args.out, resume=args.resume,
                   progress=lambda line: print(line, flush=True), device=args.device,
                   stop_at=args.stop_at, ignore_memory_check=args.ignore_memory_check,
                   meta={"command": ["scredge", *getattr(args, "argv", [])], "data": source},
                   init=init, trainable=args.trainable)
    if result.finished:
        log = result.log
        print(f"wrote {Path(args.out) / MODEL_FILE} (final val loss "
              f"{log['final_val_loss']:.4f}, {log['wall_time_s']:.0f} s) and train_log.json")
    return 0
