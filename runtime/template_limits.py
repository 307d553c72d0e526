"""Bounds on a chat template's time, recursion and size (docs/trust-and-safety.md).

A chat template is code from the model folder. jinja2's sandbox keeps it away from Python
internals; this module keeps it from running forever or filling memory, in the one
environment every rendering uses (the CLI, the Python API and the server alike):

- a wall-clock deadline, checked at every call, attribute or item lookup, operator,
  filter, output value and loop iteration (every `{% for %}` iterates through a guard put
  into the parsed template), so no loop runs past it, however deeply nested;
- a cap on nested macro / recursive-loop calls;
- caps on what a template builds before it is built: no operator, call or filter whose
  result would exceed TEMPLATE_VALUE_CHARS (its size estimated from the operands, shared
  references counted as often as they would print), no integer over TEMPLATE_INT_BITS;
- a budget of characters built in all (call results, output values, loop text) and of
  rendered output, counted as the template streams.

The budget of one rendering lives in a ContextVar, so concurrent renderings in threads
each have their own; refusal is a ScredgeError raised inside the rendering itself (no
thread is left running).
"""

from __future__ import annotations

import contextvars
import functools
import re
import time
from collections.abc import Mapping

from scredge.errors import ScredgeError
from scredge.limits import (
    TEMPLATE_CALL_DEPTH,
    TEMPLATE_INT_BITS,
    TEMPLATE_OUTPUT_CHARS,
    TEMPLATE_SECONDS,
    TEMPLATE_VALUE_CHARS,
    TEMPLATE_WORK_CHARS,
)

_SIZED = (str, list, tuple, dict)
# a format width or precision of 8+ digits, or one taken from the arguments ('*')
_BIG_FORMAT = re.compile(r"%[^a-zA-Z%]*(\d{8}|\*)|\{[^{}]*\d{8}[^{}]*\}")
LOOP_GUARD = "scredge_loop_guard"  # the filter name the parsed template's loops go through


class Budget:
    """What one rendering may still spend."""

    def __init__(self, seconds: float = TEMPLATE_SECONDS) -> None:
        self.deadline = time.monotonic() + seconds
        self.work = 0
        self.depth = 0

    def tick(self, chars: int = 0) -> None:
        self.work += chars
        if self.work > TEMPLATE_WORK_CHARS:
            raise refusal(f"builds more than {TEMPLATE_WORK_CHARS} characters in all")
        if time.monotonic() > self.deadline:
            raise refusal(f"ran longer than {TEMPLATE_SECONDS:g} s")


_BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("template_budget",
                                                                        default=None)


def refusal(why: str) -> ScredgeError:
    return ScredgeError(f"the chat template {why}; it was stopped",
                        received="a template that loops, recurses or builds text without "
                                 "bound",
                        expected="a template within scredge's limits (docs/trust-and-safety.md)",
                        fix="fix chat_template in the model folder's tokenizer_config.json "
                            "(or chat_template.jinja) and export again")


def tick(chars: int = 0) -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.tick(chars)


def render_bounded(template, **variables) -> str:
    """`template.render(**variables)` within the budget: streamed, so the output is
    counted as it grows, and the generator closed on refusal."""
    budget = Budget()
    token = _BUDGET.set(budget)
    pieces, total = [], 0
    try:
        gen = template.generate(**variables)
        try:
            for piece in gen:
                total += len(piece)
                if total > TEMPLATE_OUTPUT_CHARS:
                    raise refusal(f"renders more than {TEMPLATE_OUTPUT_CHARS} characters")
                budget.tick()
                pieces.append(piece)
        finally:
            gen.close()
    finally:
        _BUDGET.reset(token)
    return "".join(pieces)


def expanded_size(value, limit: int = TEMPLATE_VALUE_CHARS) -> int:
    """The characters/items `value` holds, shared references counted each time they occur
    (as printing it would); stops counting past `limit` (returns limit + 1)."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, (list, tuple, dict)):
            total += 1 + len(item)
            if total <= limit:
                stack.extend(item.items() if isinstance(item, dict) else item)
        elif isinstance(item, int) and not isinstance(item, bool):
            check_int(item)
        if total > limit:
            return limit + 1
    return total


def check_int(value: int) -> None:
    if value.bit_length() > TEMPLATE_INT_BITS:
        raise refusal(f"computes an integer over {TEMPLATE_INT_BITS} bits")


def check_value(value) -> int:
    """`value`'s expanded size, refusing one over TEMPLATE_VALUE_CHARS."""
    size = expanded_size(value)
    if size > TEMPLATE_VALUE_CHARS:
        raise refusal(f"builds a value of more than {TEMPLATE_VALUE_CHARS} characters or "
                      "items")
    return size


def check_args(args, kwargs: Mapping, ints_multiply: bool = True) -> None:
    """Before a call or filter runs: every argument within bounds (an integer argument
    is a width, count or repetition at most TEMPLATE_VALUE_CHARS), no format width past
    8 digits, and no pair of arguments whose product (what replace, join, indent, center
    and the like can build from them; integers count when `ints_multiply`) exceeds
    TEMPLATE_WORK_CHARS."""
    sizes = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool):
            check_int(value)
            if abs(value) > TEMPLATE_VALUE_CHARS:
                raise refusal(f"passes a count or width over {TEMPLATE_VALUE_CHARS}")
            if ints_multiply:
                sizes.append(abs(value))
        elif isinstance(value, _SIZED):
            sizes.append(check_value(value))
            if isinstance(value, str) and _BIG_FORMAT.search(value):
                check_format(value)
    sizes.sort()
    if len(sizes) >= 2 and (sizes[-1] + 1) * (sizes[-2] + 1) > TEMPLATE_WORK_CHARS:
        raise refusal("combines two values whose product exceeds its size budget")


def check_format(fmt: str) -> None:
    if _BIG_FORMAT.search(fmt):
        raise refusal("formats with a width or precision of 8 or more digits")


def check_binop(op: str, left, right) -> None:
    """Before `left op right` (the operators that can build big values) is computed."""
    ints = [v for v in (left, right) if isinstance(v, int) and not isinstance(v, bool)]
    seqs = [v for v in (left, right) if isinstance(v, _SIZED)]
    for v in ints:
        check_int(v)
    if op == "*" and len(ints) == 2:
        bits = left.bit_length() + right.bit_length()
    elif op == "**" and len(ints) == 2:
        bits = 0 if abs(left) <= 1 or right <= 0 else min(right, TEMPLATE_INT_BITS + 1) * (
            left.bit_length() - 1)
    else:
        bits = 0
    if bits > TEMPLATE_INT_BITS:
        raise refusal(f"computes an integer over {TEMPLATE_INT_BITS} bits with '{op}'")
    if op == "*" and seqs and ints:
        size = check_value(seqs[0]) * max(ints[0], 0)
    elif op == "+" and len(seqs) == 2:
        size = check_value(left) + check_value(right)
    elif op == "%" and isinstance(left, str):
        check_format(left)
        size = check_value(left) + check_value(right)
    else:
        size = 0
    if size > TEMPLATE_VALUE_CHARS:
        raise refusal(f"builds a value over {TEMPLATE_VALUE_CHARS} characters or items "
                      f"with '{op}'")


def guarded_filter(func):
    """A filter checked before it runs (arguments) and after (its result)."""

    @functools.wraps(func)  # keeps jinja's pass_context / pass_eval_context marks
    def filter_(*args, **kwargs):
        tick()
        check_args([a for a in args if isinstance(a, (*_SIZED, int))], kwargs)
        result = func(*args, **kwargs)
        tick(check_value(result))
        return result

    return filter_


def loop_guard(iterable, literal_chars: int):
    """Every loop iterates through this: one tick per item, charging the text the loop
    body writes by itself. A list is passed on as a list (so loop.length, loop.last and
    friends keep working) through a checking iterator."""
    tick()
    if isinstance(iterable, (str, bytes)):
        return _guarded(iterable, literal_chars)
    return _GuardedIterable(iterable, literal_chars)


class _GuardedIterable:
    def __init__(self, iterable, literal_chars: int) -> None:
        self._iterable = iterable
        self._chars = literal_chars

    def __iter__(self):
        return _guarded(self._iterable, self._chars)

    def __len__(self):
        return len(self._iterable)  # TypeError (no length) as the underlying object says


def _guarded(iterable, literal_chars: int):
    for item in iterable:
        tick(literal_chars)
        yield item


def guard_loops(tree, nodes) -> None:
    """Route the iterable of every `{% for %}` of the parsed `tree` through LOOP_GUARD,
    with the characters of template text its body writes on each pass."""
    for loop in tree.find_all(nodes.For):
        chars = _literal_chars(loop.body + loop.else_, nodes)
        loop.iter = nodes.Filter(loop.iter, LOOP_GUARD, [nodes.Const(chars)], [], None, None,
                                 lineno=loop.lineno)


def _literal_chars(body, nodes) -> int:
    total = 0
    for node in body:
        if isinstance(node, nodes.TemplateData):
            total += len(node.data)
        elif not isinstance(node, nodes.For):  # a nested loop charges its own text
            total += _literal_chars(list(node.iter_child_nodes()), nodes)
    return total


def enter_call(obj, args, kwargs) -> bool:
    """Before a call: its arguments checked (a str method's string among them); True when
    it nests (a macro, a recursive loop), then counted in the depth until `leave_call`."""
    from jinja2.runtime import LoopContext, Macro

    tick()
    # a str method (jinja wraps format/format_map, keeping the method as __wrapped__)
    owner = getattr(getattr(obj, "__wrapped__", obj), "__self__", None)
    if getattr(obj, "__name__", "") != "safe_range":  # jinja's range has its own cap
        check_args((owner, *args) if isinstance(owner, _SIZED) else args, kwargs,
                   ints_multiply=isinstance(owner, _SIZED))
    if isinstance(owner, str) and getattr(obj, "__name__", "") in ("format", "format_map"):
        check_format(owner)
    if not isinstance(obj, (Macro, LoopContext)):
        return False
    budget = _BUDGET.get()
    if budget is not None:
        if budget.depth >= TEMPLATE_CALL_DEPTH:
            raise refusal(f"nests calls deeper than {TEMPLATE_CALL_DEPTH} levels")
        budget.depth += 1
    return True


def leave_call() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.depth -= 1
