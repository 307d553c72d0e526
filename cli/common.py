"""Arguments several subcommands share."""

from __future__ import annotations

import argparse
from pathlib import Path

from scredge.config import PRESETS, SCRConfig
from scredge.errors import ScredgeError

CUDA_GRAPH_HELP = "with --backend trt: replay the steady decode step from CUDA graphs"


def add_model_source(p: argparse.ArgumentParser, preset_default: str | None = "tiny") -> None:
    """--preset / --config; `preset_default` None lets the command tell an explicit --preset
    from the default (config_from_args still falls back to tiny)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", default=preset_default,
                   help=f"named config: {', '.join(PRESETS)} (default tiny)")
    g.add_argument("--config", type=Path,
                   help="a config JSON file (bare fields or {\"model\": {...}})")


def config_from_args(args: argparse.Namespace) -> SCRConfig:
    if args.config is not None:
        return SCRConfig.load(args.config)
    return SCRConfig.preset(args.preset or "tiny")


def add_folder(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=Path, help="an artifact folder written by `scredge export`")


def add_sampling_args(p: argparse.ArgumentParser, temperature: float, top_p: float) -> None:
    """--greedy, --temperature, --top-k, --top-p, --repetition-penalty, --seed; the
    defaults of temperature and top-p are the command's (a chat samples more narrowly)."""
    p.add_argument("--greedy", action="store_true", help="argmax decoding (temperature 0)")
    p.add_argument("--temperature", type=float, default=temperature,
                   help=f"default {temperature}")
    p.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=top_p,
                   help=f"nucleus mass in (0, 1] (default {top_p}; 1 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")


def sampling_kwargs(args: argparse.Namespace) -> dict:
    """The flags of add_sampling_args as Engine.generate / stream / chat_stream arguments."""
    return dict(temperature=0.0 if args.greedy else args.temperature, top_k=args.top_k,
                top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed)


def check_cuda_graph(args: argparse.Namespace) -> None:
    """--cuda-graph names the TensorRT runner: refuse it with --backend ort."""
    if args.cuda_graph and args.backend != "trt":
        raise ScredgeError("--cuda-graph is a TensorRT runner option",
                           received=f"--backend {args.backend} --cuda-graph",
                           expected="--backend trt --cuda-graph",
                           fix="add --backend trt (needs an engine from `scredge build`), or "
                               "drop --cuda-graph")


def print_json_or_lines(data: dict, lines: list[str], as_json: bool) -> None:
    import json

    print(json.dumps(data, indent=2) if as_json else "\n".join(lines))


def check_text_args(args: argparse.Namespace) -> None:
    """Refuse an argument that is not UTF-8 text. Python turns the bytes of such an argv
    entry into lone surrogates, which every later encode (a prompt's tokens, the output)
    would fail on; file paths (Path arguments) may hold any bytes and are left alone."""
    for name, value in vars(args).items():
        if name == "argv":  # the raw command line, recorded as given (paths included)
            continue
        for text in value if isinstance(value, list) else [value]:
            if not isinstance(text, str):
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                option = "--" + name.replace("_", "-")
                raise ScredgeError(f"{option} is not valid UTF-8 text",
                                   received=f"{text!a}"[:200],
                                   expected="UTF-8 text (check the terminal's or script's "
                                            "encoding)",
                                   fix=f"pass {option} as UTF-8") from exc


def printable(text: str) -> str:
    """`text` safe to print on any stream: lone surrogates shown as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
