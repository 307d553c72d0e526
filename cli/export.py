"""`scredge export`: a model to a verified ONNX artifact folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from scredge.config import PRESETS


def add(sub) -> None:
    p = sub.add_parser("export", help="export a model to a verified ONNX artifact folder")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default="tiny",
                     help=f"seeded model of a named config: {', '.join(PRESETS)} (default tiny)")
    src.add_argument("--pretrained", metavar="NAME",
                     help="a checkpoint shipped with scredge and trained by `scredge train`: "
                          "tiny (prose)")
    src.add_argument("--from-llama", type=Path, metavar="DIR",
                     help="a local Hugging Face Llama/Mistral/Qwen2 folder (config.json + "
                          "safetensors, tokenizer files when present); SCR layers are added "
                          "with gamma = 0")
    src.add_argument("--from-gguf", type=Path, metavar="FILE",
                     help="a Llama/Mistral/Qwen2 GGUF file (F32, F16, Q8_0, Q4_0, Q4_1, Q4_K, "
                          "Q6_K), dequantized to float32, with the tokenizer and chat template "
                          "it carries; SCR layers are added with gamma = 0")
    src.add_argument("--from-run", type=Path, metavar="RUN",
                     help="a `scredge train` run folder: its model.safetensors, and the "
                          "tokenizer it kept when trained with --init from a Hugging Face "
                          "folder")
    p.add_argument("--config", type=Path,
                   help="a config JSON file (seeded weights, or the config of --weights)")
    p.add_argument("--weights", type=Path, help="a .safetensors checkpoint")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    p.add_argument("--dtype", default="float32", help="float32 (default) or float16")
    p.add_argument("--opset", type=int,
                   help="ONNX opset, >= 17 (default 18; 21 with --quantize)")
    p.add_argument("--quantize", metavar="int8|int4",
                   help="weight-only quantized artifact (SCR_SPEC section 4)")
    p.add_argument("--block-size", type=int, help="--quantize: rows per scale (default 32)")
    p.add_argument("--quant-method", choices=["rtn", "hqq", "gptq"],
                   help="--quantize: gptq (activation-aware; the int4 default), rtn "
                        "(round-to-nearest; the int8 default) or hqq (int4, uniform)")
    p.add_argument("--mixed-precision", choices=["auto", "off"],
                   help="--quantize int4: auto (default) promotes the matrices measured most "
                        "sensitive to int8 until the artifact passes the int4 tier; off: "
                        "every matrix int4")
    p.add_argument("--int4-grid", choices=["sym", "asym", "asym_float"],
                   help="--quantize int4: the onnxruntime form's grid (default asym_float: "
                        "float zero points; asym: integer zero points; sym); the TensorRT "
                        "form is always symmetric")
    p.add_argument("--activations", choices=["int8", "float32"],
                   help="--quantize: the onnxruntime form's MatMulNBits activations: int8 "
                        "(accuracy_level 4, onnxruntime-genai's; faster) or float32 (level 0). "
                        "Default: int8, except float32 for int4 on float zero points (the "
                        "default asym_float grid). The quantized tier judges either")
    p.add_argument("--embedding", choices=["shared", "float"],
                   help="--quantize, tied embeddings: shared (default) reads the quantized "
                        "head's table in the onnxruntime form (GatherBlockQuantized); float "
                        "keeps a float table")
    p.add_argument("--calibration", type=Path, metavar="FILE",
                   help="gptq / mixed precision: a UTF-8 text like the model will see (>= "
                        "2,048 tokens; the first 32,768 are used; default: the built-in prose "
                        "corpus's training part)")
    p.add_argument("--scr-layers", help="'all', 'none', or indices like 0,2 (default: the "
                                        "preset's or config's; every layer for --from-llama "
                                        "and --from-gguf)")
    p.add_argument("--keep-reference", action="store_true",
                   help="also keep the float32 reference weights (model.safetensors), which "
                        "`parity --record`, `export-hf` and `bench --compare torch` read; "
                        "without it the folder is slim: graphs, golden/held-out references, "
                        "tokenizer")
    p.add_argument("--target", default="all", choices=["all", "ort", "trt"],
                   help="the backends whose graphs the folder holds (default all)")
    p.add_argument("--cache", choices=["concat", "shared"],
                   help="the onnxruntime graph's KV cache: shared (default; SCR_SPEC v3: "
                        "one in-place buffer per layer, GroupQueryAttention; onnxruntime >= "
                        "1.32) or concat (whole caches in and out); TensorRT's graph is "
                        "always concat (model.trt.onnx beside a shared model.onnx)")
    p.add_argument("--ignore-memory-check", action="store_true",
                   help="export even when the estimate of the memory needed exceeds what "
                        "is available (refused by default, before any work)")
    p.add_argument("--out", required=True, help="the artifact folder to create")
    p.add_argument("--force", action="store_true",
                   help="replace an existing artifact folder (or an empty one); never another")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scredge.export.ort_shared_cache import check_cache_option
    from scredge.export.pipeline import (
        check_options,
        check_target,
        default_opset,
        export_artifact,
    )
    from scredge.export.quantize import parse_quantize_args
    from scredge.export.sources import select_source

    out = Path(args.out)
    # refuse bad options before building or loading anything
    quant = parse_quantize_args(args.quantize, args.block_size, args.quant_method, args.dtype,
                                args.calibration, args.mixed_precision, args.int4_grid,
                                args.embedding, args.activations)
    opset = default_opset(quant) if args.opset is None else args.opset
    check_options(out.absolute(), args.dtype, opset, args.force, window=None)
    check_cache_option(args.cache, check_target(args.target))

    def load():
        return select_source(
            preset=args.preset, pretrained=args.pretrained, llama=args.from_llama,
            run=args.from_run, gguf=args.from_gguf, config=args.config, weights=args.weights,
            scr_layers=args.scr_layers, seed=args.seed)

    if quant is None:  # the model in a child; verified here, without torch (model_apart)
        from scredge.export.model_apart import export_apart

        path = export_apart(load, out, dtype=args.dtype, opset=opset, cache=args.cache,
                            force=args.force, keep_reference=args.keep_reference,
                            target=args.target, memory_check=not args.ignore_memory_check,
                            log=lambda s: print(s, flush=True))
        print(f"wrote {path}")
        return 0
    src = load()
    path = export_artifact(src.model, out, dtype=args.dtype, opset=opset, quantize=quant,
                           cache=args.cache, force=args.force, source=src.description,
                           tokenizer=src.tokenizer, log=lambda s: print(s, flush=True),
                           keep_reference=args.keep_reference, target=args.target,
                           memory_check=not args.ignore_memory_check)
    print(f"wrote {path}")
    return 0
