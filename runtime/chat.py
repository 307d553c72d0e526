"""Chat templates rendered as transformers renders them, in jinja2's immutable sandbox.

The environment is the one transformers gives chat templates (trim_blocks, lstrip_blocks,
loop controls, the `generation` block tag, a `tojson` that does not escape HTML,
`raise_exception`, `strftime_now`, a plain `dict` and an underscore-refusing `namespace`),
and the variables are the same: `messages`, `tools`, `documents`, `add_generation_prompt`
and the tokenizer's named special tokens. A template is untrusted text from a model folder:
the sandbox keeps it from reaching Python internals, and it sees only plain JSON data.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import datetime

from scredge.deps import require
from scredge.errors import ScredgeError

# a message's reasoning may come under these names; templates read the first
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def render_chat(template: str | None, messages, special_tokens: Mapping[str, str], *,
                add_generation_prompt: bool = True, **template_kwargs) -> str:
    """`template` applied to one conversation; refuses clearly without a template."""
    if not template:
        raise ScredgeError("this model has no chat template",
                           received="no chat_template in tokenizer_config.json and no "
                                    "chat_template.jinja in the artifact",
                           expected="a folder whose tokenizer carries a chat template",
                           fix="generate from a plain prompt instead, or export from a folder "
                               "whose tokenizer has a chat_template")
    jinja2 = require("jinja2")
    chat = _plain(_check_messages(messages))
    chat = [_alias_reasoning({k: v for k, v in m.items() if v is not None}) for m in chat]
    variables = {**special_tokens, **_plain(template_kwargs)}
    try:
        return _compiled(template).render(messages=chat, tools=None, documents=None,
                                          add_generation_prompt=add_generation_prompt,
                                          **variables)
    except jinja2.TemplateError as exc:  # raise_exception, sandbox refusals, syntax
        raise ScredgeError("the chat template refused these messages",
                           received=f"{type(exc).__name__}: {exc}",
                           expected="messages the model's template accepts",
                           fix="check roles and their order (some templates require a "
                               "system/user/assistant alternation)") from exc


def _check_messages(messages) -> list[dict]:
    if isinstance(messages, Mapping):
        messages = [messages]
    if not isinstance(messages, (list, tuple)) or not messages or not all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str) for m in messages):
        raise ScredgeError("chat messages must be a non-empty list of objects with a role",
                           received=repr(messages)[:120],
                           expected='[{"role": "user", "content": "Hello"}, ...]')
    return [dict(m) for m in messages]


def _alias_reasoning(message: dict) -> dict:
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None),
                     None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def _plain(value):
    """Only JSON-like data reaches a template (subclasses stripped to their base type)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    item = getattr(value, "item", None)  # NumPy scalars
    if callable(item):
        return _plain(item())
    return f"<{type(value).__name__}>"


@functools.lru_cache(maxsize=8)
def _compiled(template: str):
    jinja2 = require("jinja2")
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """`{% generation %}...{% endgeneration %}` marks assistant text in training
        templates; rendering a prompt just keeps its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body
                                          ).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _namespace_class()
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ScredgeError("the model's chat template is not valid Jinja",
                           received=f"line {exc.lineno}: {exc.message}",
                           fix="fix chat_template in tokenizer_config.json (or "
                               "chat_template.jinja) and export again") from exc


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # jinja's own tojson escapes HTML characters, which a prompt must not have
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _raise_exception(message):
    raise require("jinja2").exceptions.TemplateError(message)


def _strftime_now(format):
    return datetime.now().strftime(format)


class _TemplateDict:
    """`dict(...)` for templates, without the type itself (no attribute games on it)."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


@functools.lru_cache(maxsize=1)
def _namespace_class():
    jinja2 = require("jinja2")

    class Namespace(jinja2.utils.Namespace):
        """jinja's namespace, refusing underscore names (no reach into internals)."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                _check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            _check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore names on a namespace: {name!r}")

    return Namespace


def chat_messages(prompt: str | None, chat: bool, messages_file) -> list[dict] | None:
    """`scredge generate`'s conversation: a messages file (a JSON list of {"role",
    "content"}), then --prompt as the user's turn when --chat or a file is given; None
    when neither asks for a chat (a plain prompt)."""
    if messages_file is None and not chat:
        return None
    messages: list[dict] = []
    if messages_file is not None:
        from pathlib import Path

        try:
            messages = json.loads(Path(messages_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ScredgeError("cannot read the messages file", received=f"{messages_file}: "
                               f"{exc}", expected='a JSON list like [{"role": "user", '
                                                  '"content": "Hello"}]') from exc
        messages = _check_messages(messages)
    if prompt is not None:
        messages.append({"role": "user", "content": prompt})
    return _check_messages(messages)
