"""Chat templates are bounded in time, nesting and size (issue 30, class 1). Oracles: a
hostile template ends in a ScredgeError within the time limit plus a margin, never a
traceback; a well-behaved template renders exactly what plain Python computes; a thread
rendering in parallel keeps its own budget."""

from __future__ import annotations

import threading
import time

import pytest
from hostile_templates import HOSTILE
from hypothesis import given, settings
from hypothesis import strategies as st

from scredge.errors import ScredgeError
from scredge.limits import TEMPLATE_SECONDS, TEMPLATE_VALUE_CHARS
from scredge.runtime.chat import render_chat

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_template_is_refused_in_time(name):
    """Oracle: ScredgeError (not a traceback, not a hang) within the limit + 3 s."""
    t0 = time.monotonic()
    with pytest.raises(ScredgeError):
        render_chat(HOSTILE[name], MESSAGES, {})
    assert time.monotonic() - t0 < TEMPLATE_SECONDS + 3


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 3000), k=st.integers(0, 5000))
def test_string_repetition_is_exact_or_refused(n, k):
    """Oracle: Python's own 'a' * n * k: rendered exactly below the value limit,
    refused above it."""
    template = "{{ ('a' * " + str(n) + ") * " + str(k) + " }}"
    if n * k <= TEMPLATE_VALUE_CHARS:
        assert render_chat(template, MESSAGES, {}) == "a" * n * k
    else:
        with pytest.raises(ScredgeError):
            render_chat(template, MESSAGES, {})


@settings(max_examples=15, deadline=None)
@given(depth=st.integers(1, 80))
def test_macro_nesting_is_exact_or_refused(depth):
    """Oracle: a macro that recurses `depth` times renders `depth` marks, or is refused
    past the nesting limit (64)."""
    template = ("{% macro f(n) %}{% if n %}|{{ f(n - 1) }}{% endif %}{% endmacro %}"
                "{{ f(DEPTH) }}").replace("DEPTH", str(depth))
    if depth < 64:
        assert render_chat(template, MESSAGES, {}) == "|" * depth
    else:
        with pytest.raises(ScredgeError, match="nests calls"):
            render_chat(template, MESSAGES, {})


def test_a_hostile_render_does_not_spend_another_threads_budget():
    """Oracle: a plain template rendered in a thread while another thread's template
    loops succeeds; each rendering has its own budget."""
    errors, results = [], []

    def hostile():
        try:
            render_chat(HOSTILE["nested_loops"], MESSAGES, {})
        except ScredgeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=hostile)
    thread.start()
    time.sleep(0.5)
    results.append(render_chat("{% for m in messages %}{{ m.content }}{% endfor %}",
                               MESSAGES, {}))
    thread.join()
    assert results == ["hi"] and len(errors) == 1


def test_loop_helpers_still_work():
    """Oracle: the guard keeps loop.length / loop.last / loop.index as jinja gives them."""
    template = ("{% for m in messages %}{{ loop.index }}/{{ loop.length }}"
                "{% if loop.last %}!{% endif %}{% endfor %}")
    assert render_chat(template, MESSAGES * 3, {}) == "1/32/33/3!"


def test_lone_surrogate_in_messages_is_refused():
    """Oracle: no UTF-8 text holds a lone surrogate; ScredgeError before rendering."""
    with pytest.raises(ScredgeError, match="not valid Unicode"):
        render_chat("{{ messages[0].content }}", [{"role": "user", "content": "a\ud800"}], {})
