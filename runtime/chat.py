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
import reprlib
from collections.abc import Mapping
from datetime import datetime

from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.files import read_json_limited
from scredge.limits import MAX_JSON_BYTES, MAX_JSON_DEPTH, MAX_TEXT_BYTES, TEMPLATE_VALUE_CHARS
from scredge.runtime.template_limits import (
    LOOP_GUARD,
    check_binop,
    check_value,
    enter_call,
    expanded_size,
    guard_loops,
    guarded_filter,
    leave_call,
    loop_guard,
    refusal,
    render_bounded,
    tick,
)

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
    if not isinstance(template, str) or len(template) > MAX_TEXT_BYTES:
        raise ScredgeError("the chat template is not a text of at most "
                           f"{MAX_TEXT_BYTES} characters",
                           received=f"{type(template).__name__} of "
                                    f"{len(template) if isinstance(template, str) else '?'}",
                           fix="fix chat_template in the model folder and export again")
    chat = _plain(_check_messages(messages))
    chat = [_alias_reasoning({k: v for k, v in m.items() if v is not None}) for m in chat]
    variables = {**_plain(dict(special_tokens)), **_plain(template_kwargs)}
    compiled = _compiled(template)
    try:
        return render_bounded(compiled, messages=chat, tools=None, documents=None,
                              add_generation_prompt=add_generation_prompt, **variables)
    except ScredgeError:
        raise
    except jinja2.TemplateError as exc:  # raise_exception, sandbox refusals
        raise ScredgeError("the chat template refused these messages",
                           received=f"{type(exc).__name__}: {exc}"[:300],
                           expected="messages the model's template accepts",
                           fix="check roles and their order (some templates require a "
                               "system/user/assistant alternation)") from exc
    except (RecursionError, MemoryError) as exc:
        raise refusal(f"ran out of {'stack' if isinstance(exc, RecursionError) else 'memory'}"
                      ) from exc
    except Exception as exc:  # noqa: BLE001 - the template is code; any error is its own
        raise ScredgeError("the chat template failed on these messages",
                           received=f"{type(exc).__name__}: {exc}"[:300],
                           expected="a template that renders these messages",
                           fix="check the messages against the template, or fix "
                               "chat_template in the model folder") from exc


def _check_messages(messages) -> list[dict]:
    if isinstance(messages, Mapping):
        messages = [messages]
    if not isinstance(messages, (list, tuple)) or not messages or not all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str) for m in messages):
        raise ScredgeError("chat messages must be a non-empty list of objects with a role",
                           received=reprlib.repr(messages),
                           expected='[{"role": "user", "content": "Hello"}, ...]')
    return [dict(m) for m in messages]


def _alias_reasoning(message: dict) -> dict:
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None),
                     None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def _plain(value):
    """Only JSON-like data reaches a template (subclasses stripped to their base type;
    bounded in size and depth; strings valid Unicode)."""
    if expanded_size(value, TEMPLATE_VALUE_CHARS) > TEMPLATE_VALUE_CHARS:
        raise ScredgeError("chat messages are too large for the chat template",
                           received="more than "
                                    f"{TEMPLATE_VALUE_CHARS} characters and items",
                           expected="a conversation that fits the model's context")
    return _plain_value(value, 0)


def _plain_value(value, depth: int):
    if depth > MAX_JSON_DEPTH:
        raise ScredgeError("chat messages are nested too deeply",
                           received=f"more than {MAX_JSON_DEPTH} levels",
                           expected="JSON-like messages")
    if isinstance(value, str):
        text = str.__str__(value)
        _check_unicode(text)
        return text
    if value is None or type(value) in (int, float, bool):
        return value
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain_value(k, depth + 1): _plain_value(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_plain_value(v, depth + 1) for v in value)
    if isinstance(value, list):
        return [_plain_value(v, depth + 1) for v in value]
    item = getattr(value, "item", None)  # NumPy scalars
    if callable(item):
        return _plain_value(item(), depth + 1)
    return f"<{type(value).__name__}>"


def _check_unicode(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ScredgeError("chat messages are not valid Unicode text",
                           received=f"{exc.object[exc.start:exc.end]!a} at index {exc.start}",
                           expected="text without lone surrogates (U+D800..U+DFFF)",
                           fix="decode your input with errors='replace'") from exc


@functools.lru_cache(maxsize=8)
def _compiled(template: str):
    """The template parsed, its loops routed through the guard, compiled."""
    jinja2 = require("jinja2")
    from jinja2 import nodes

    env = _environment()
    try:
        tree = env.parse(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ScredgeError("the model's chat template is not valid Jinja",
                           received=f"line {exc.lineno}: {exc.message}",
                           fix="fix chat_template in tokenizer_config.json (or "
                               "chat_template.jinja) and export again") from exc
    except RecursionError as exc:
        raise ScredgeError("the model's chat template is nested too deeply to parse",
                           fix="fix chat_template in the model folder") from exc
    guard_loops(tree, nodes)
    try:
        return env.from_string(tree)
    except (RecursionError, jinja2.TemplateError) as exc:
        raise ScredgeError("the model's chat template cannot be compiled",
                           received=f"{type(exc).__name__}: {exc}"[:300],
                           fix="fix chat_template in the model folder") from exc


@functools.lru_cache(maxsize=1)
def _environment():
    """transformers' chat-template environment, bounded (runtime/template_limits.py)."""
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols

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

    env = _bounded_class()(trim_blocks=True, lstrip_blocks=True,
                           extensions=[GenerationBlock, loopcontrols], finalize=_finalize)
    env.filters["tojson"] = _tojson
    env.filters = {name: guarded_filter(f) for name, f in env.filters.items()}
    env.filters[LOOP_GUARD] = loop_guard
    env.globals.pop("lipsum", None)  # no chat template writes lorem ipsum
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _namespace_class()
    return env


@functools.lru_cache(maxsize=1)
def _bounded_class():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        """The immutable sandbox, with every call, lookup and size-building operator
        checked against the rendering's budget (template_limits)."""

        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def call_binop(self, context, operator, left, right):
            tick()
            check_binop(operator, left, right)
            result = super().call_binop(context, operator, left, right)
            tick(check_value(result))
            return result

        def call(self, context, obj, /, *args, **kwargs):
            nests = enter_call(obj, args, kwargs)
            try:
                result = super().call(context, obj, *args, **kwargs)
            finally:
                if nests:
                    leave_call()
            tick(check_value(result))
            return result

        def getattr(self, obj, attribute):
            tick()
            return super().getattr(obj, attribute)

        def getitem(self, obj, argument):
            tick()
            return super().getitem(obj, argument)

    return BoundedEnvironment


def _finalize(value):
    """Every `{{ value }}` written, charged to the budget before it is turned to text."""
    tick(check_value(value))
    return value


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # jinja's own tojson escapes HTML characters, which a prompt must not have
    if isinstance(indent, (int, str)) and not isinstance(indent, bool) and (
            (indent if isinstance(indent, int) else len(indent)) > 16):
        raise refusal("indents JSON by more than 16")
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
            tick(check_value(attrs))
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            _check_name(name)
            tick(check_value(value))
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
        messages = _check_messages(read_json_limited(
            messages_file, "the messages file", MAX_JSON_BYTES,
            expected='a JSON list like [{"role": "user", "content": "Hello"}]'))
    if prompt is not None:
        messages.append({"role": "user", "content": prompt})
    return _check_messages(messages)
