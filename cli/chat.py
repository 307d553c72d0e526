"""`scredge chat`: an interactive chat with an artifact folder's model, through its chat
template, replies streamed as they are generated (torch-free).

The whole conversation is sent every turn (Engine.chat_stream renders it with the
template); /reset starts it again, /quit or Ctrl-D leaves; Ctrl-C stops a reply mid-way
(the turn is dropped) or, at the prompt, leaves.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from scredge.cli.common import CUDA_GRAPH_HELP, add_folder, add_sampling_args, sampling_kwargs

PROMPT, REPLY = "you> ", "model> "
HELP = "/reset clears the conversation, /quit (or Ctrl-D) leaves, Ctrl-C stops a reply"


def add(sub) -> None:
    p = sub.add_parser("chat", help="chat with an artifact folder's model (its chat template)")
    add_folder(p)
    p.add_argument("--system", help="a system message opening the conversation (default: "
                                    "the template's own, if it has one)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="per reply (default 256)")
    add_sampling_args(p, temperature=0.7, top_p=0.9)
    p.add_argument("--backend", default="auto", choices=["auto", "ort", "trt"])
    p.add_argument("--cuda-graph", action="store_true", help=CUDA_GRAPH_HELP)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scredge.runtime import Engine

    engine = Engine.load(args.folder, backend=args.backend, cuda_graph=args.cuda_graph)
    start = [{"role": "system", "content": args.system}] if args.system else []
    engine.render_chat([*start, {"role": "user", "content": "hi"}])  # a template, or refuse
    kwargs = dict(max_new_tokens=args.max_new_tokens, **sampling_kwargs(args))
    print(f"scredge chat: {args.folder} ({engine.backend}); {HELP}", flush=True)
    try:
        converse(engine, start, kwargs, _read_line)
    finally:
        engine.close()
    return 0


def _read_line() -> str | None:
    """The user's next line, None at Ctrl-D / Ctrl-C; piped input is echoed, so a
    transcript reads like the session."""
    try:
        line = input(PROMPT)
    except (EOFError, KeyboardInterrupt):
        print()
        return None
    if not sys.stdin.isatty():
        print(line)
    return line


def converse(engine, start: list[dict], kwargs: dict,
             read_line: Callable[[], str | None]) -> list[dict]:
    """The read-reply loop; returns the conversation at the end."""
    history = list(start)
    while (line := read_line()) is not None:
        text = line.strip()
        if text in ("/quit", "/exit"):
            break
        if text == "/reset":
            history = list(start)
            print("(conversation cleared)", flush=True)
            continue
        if not text:
            continue
        turn = [*history, {"role": "user", "content": text}]
        print(REPLY, end="", flush=True)
        pieces: list[str] = []
        try:
            for piece in engine.chat_stream(turn, **kwargs):
                print(piece, end="", flush=True)
                pieces.append(piece)
        except KeyboardInterrupt:
            print(" [stopped; this turn is dropped]", flush=True)
            continue
        print(flush=True)
        history = [*turn, {"role": "assistant", "content": "".join(pieces).strip()}]
    return history
