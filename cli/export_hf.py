"""`scredge export-hf`: a scredge checkpoint back to a folder transformers loads."""

from __future__ import annotations

import argparse
from pathlib import Path


def add(sub) -> None:
    p = sub.add_parser(
        "export-hf", help="write a transformers folder (Llama/Mistral/Qwen2) from a checkpoint",
        description="The base model as a Hugging Face folder AutoModelForCausalLM loads; the "
                    "SCR tensors, which transformers has no layer for, in a separate file.")
    p.add_argument("run", type=Path, metavar="RUN",
                   help="a `scredge train` run or artifact folder (model.safetensors), or a "
                        ".safetensors checkpoint")
    p.add_argument("out", type=Path, metavar="OUT", help="the folder to write (new or empty)")
    p.add_argument("--dtype", default="float32",
                   help="weights of the base: float32 (default), bfloat16 or float16")
    p.add_argument("--force", action="store_true",
                   help="replace an earlier export-hf output (never another folder)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scredge.contract import HF_README_FILE, HF_SCR_FILE
    from scredge.export.hf_export import export_hf

    result = export_hf(args.run, args.out, dtype=args.dtype, force=args.force)
    print(f"wrote {result.folder} ({result.architecture}): {', '.join(result.files)}")
    print(f"{HF_README_FILE} there says what transformers runs and what {HF_SCR_FILE} holds")
    if not result.scr_layers:
        print("no SCR layers: transformers runs the whole model")
    elif result.scr_active:
        print(f"SCR layers {list(result.scr_layers)} are active (max |gamma| = "
              f"{result.max_abs_gamma:.4g}): transformers runs the base model WITHOUT them; "
              f"their tensors are in {HF_SCR_FILE} (transformers ignores it; "
              "`scredge export --from-llama OUT` reads it)")
    else:
        print(f"SCR layers {list(result.scr_layers)} have gamma = 0 (identity): transformers' "
              f"logits are scredge's; their tensors are in {HF_SCR_FILE}")
    return 0
