"""The `scredge` command: argument parsing and printing over library functions.

Each subcommand lives in its own module (`add` registers its parser, `run` calls the
library and prints). A subcommand is listed only once it works. User errors
(ScredgeError) print their message and exit with status 2; nothing else is caught.
"""

from __future__ import annotations

import argparse
import sys

import scredge
from scredge.cli import (
    bench,
    build,
    chat,
    export,
    export_hf,
    export_triton,
    generate,
    info,
    parity,
    serve,
    train,
)
from scredge.cli.common import check_text_args, printable
from scredge.errors import ScredgeError

COMMANDS = (info, export, export_hf, export_triton, generate, chat, build, parity, train, bench,
            serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scredge",
        description="SCR language models from PyTorch to ONNX Runtime and TensorRT.",
    )
    parser.add_argument("--version", action="version", version=f"scredge {scredge.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by `train`
    try:
        check_text_args(args)
        return args.func(args)
    except ScredgeError as exc:
        print(printable(f"scredge {args.command}: error: {exc}"), file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
