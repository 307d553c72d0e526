"""`scredge generate`: text from an artifact folder, torch-free."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scredge.cli.common import CUDA_GRAPH_HELP, add_folder, add_sampling_args, sampling_kwargs
from scredge.errors import ScredgeError


def add(sub) -> None:
    p = sub.add_parser("generate", help="generate text from an artifact folder (torch-free)")
    add_folder(p)
    p.add_argument("--prompt", help="the prompt text (with --chat: the user's message)")
    p.add_argument("--chat", action="store_true",
                   help="send --prompt as a user message through the model's chat template")
    p.add_argument("--messages", type=Path, metavar="FILE",
                   help="a chat: a JSON list of {\"role\", \"content\"} messages (--prompt, "
                        "when given, is appended as the user's turn)")
    p.add_argument("--ignore-eos", action="store_true",
                   help="do not stop at the tokenizer's end-of-sequence ids")
    p.add_argument("--max-new-tokens", type=int, default=128, help="default 128")
    add_sampling_args(p, temperature=1.0, top_p=1.0)
    p.add_argument("--stop", action="append", help="a stop string (repeatable)")
    p.add_argument("--backend", default="auto", choices=["auto", "ort", "trt"])
    p.add_argument("--cuda-graph", action="store_true", help=CUDA_GRAPH_HELP)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json-schema", type=Path, metavar="FILE",
                     help="constrain the output to JSON matching this JSON Schema file")
    fmt.add_argument("--json-object", action="store_true",
                     help="constrain the output to one JSON object")
    fmt.add_argument("--regex", metavar="R", help="constrain the output to this regular "
                                                  "expression")
    fmt.add_argument("--grammar", type=Path, metavar="FILE",
                     help="constrain the output to this Lark grammar file (llguidance's Lark)")
    p.add_argument("--speculative", metavar="ngram|FOLDER",
                   help="speculative decoding: 'ngram' (prompt lookup) or a draft model's "
                        "artifact folder (same tokenizer)")
    p.add_argument("--speculative-k", type=int, default=4,
                   help="tokens proposed per step (default 4)")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: ids, text, backend, timing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scredge.runtime import Engine
    from scredge.runtime.chat import chat_messages

    messages = chat_messages(args.prompt, args.chat, args.messages)
    if messages is None and args.prompt is None:
        raise ScredgeError("generate needs --prompt (or --messages FILE for a chat)",
                           fix="pass --prompt TEXT")
    engine = Engine.load(args.folder, backend=args.backend, cuda_graph=args.cuda_graph)
    prompt = args.prompt if messages is None else engine.chat_ids(messages)
    echo = args.prompt if messages is None else ""  # a chat prints the reply alone
    kwargs = dict(max_new_tokens=args.max_new_tokens, **sampling_kwargs(args),
                  stop=args.stop or (), ignore_eos=args.ignore_eos,
                  grammar=grammar_arg(args), speculative=speculative_arg(args, engine),
                  speculative_k=args.speculative_k)
    if args.stream and not args.json:
        print(echo, end="", flush=True)
        for piece in engine.stream(prompt, **kwargs):
            print(piece, end="", flush=True)
        print()
        return 0
    result = engine.generate(prompt, **kwargs)
    if args.json:
        print(json.dumps({"ids": result.ids, "text": result.text, "backend": engine.backend,
                          "finish_reason": result.finish_reason,
                          "prompt_tokens": result.prompt_tokens, "timing": result.timing}))
    else:
        print(echo + result.text)
    return 0


def grammar_arg(args: argparse.Namespace):
    """--json-schema / --json-object / --regex / --grammar as a runtime Grammar (or None)."""
    from scredge.runtime.constrained import Grammar

    if args.json_schema is not None:
        return Grammar.json_schema(_read_text(args.json_schema, "--json-schema"))
    if args.json_object:
        return Grammar.json_object()
    if args.regex is not None:
        return Grammar.regex(args.regex)
    if args.grammar is not None:
        return Grammar.lark(_read_text(args.grammar, "--grammar"))
    return None


def speculative_arg(args: argparse.Namespace, engine):
    """--speculative: 'ngram', or a draft artifact folder loaded on the target's backend."""
    if args.speculative in (None, "ngram"):
        return args.speculative
    from scredge.runtime import Engine

    return Engine.load(args.speculative, backend=engine.backend)


def _read_text(path: Path, flag: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScredgeError(f"{flag} file cannot be read", received=f"{path}: {exc}"[:300],
                           expected="a UTF-8 text file") from exc
