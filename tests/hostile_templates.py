"""Hostile chat templates (issue 30, class 1): loops, recursion, blow-ups of strings,
numbers and references, and plain errors. One list, used by
tests/runtime/test_template_limits.py and the probe (tools/probe_fixtures.py)."""

HOSTILE = {
    "range_1e9": "{% for i in range(10**9) %}x{% endfor %}",
    "nested_loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                    "{% endfor %}",
    "loops_over_lists": "{% set l = range(100000)|list %}{% for a in l %}{% for b in l %}"
                        "{% endfor %}{% endfor %}",
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "recursive_loop": "{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}",
    "huge_string": "{{ 'a' * 10**10 }}",
    "doubling_namespace": "{% set ns = namespace(s='ab') %}{% for i in range(60) %}"
                          "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "doubling_macro": "{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% endif %}"
                      "{% endmacro %}{{ f('ab', 60) }}",
    "shared_references": "{% set ns = namespace(l=[1]) %}{% for i in range(40) %}"
                         "{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l }}",
    "shared_references_tojson": "{% set ns = namespace(l=[1]) %}{% for i in range(60) %}"
                                "{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l|tojson }}",
    "big_power": "{{ 2 ** 100000000 }}",
    "big_power_tower": "{{ 9 ** (9 ** 9) }}",  # jinja's ** is left-associative
    "center_filter": "{{ 'a'|center(10**9) }}",
    "center_method": "{{ 'a'.center(10**9) }}",
    "percent_width": "{{ '%0999999999d' % 1 }}",
    "format_width": "{{ '{:>999999999}'.format(1) }}",
    "replace_blowup": "{% set s = 'a' * 1000000 %}{{ s.replace('a', s) }}",
    "set_block_text": "{% set x %}{% for i in range(100000) %}{% for j in range(100000) %}"
                      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa{% endfor %}{% endfor %}"
                      "{% endset %}{{ x|length }}",
    "join_blowup": "{{ range(100000)|list|join('x' * 100000) }}",
    "indent_blowup": "{{ ('\\n' * 1000000)|indent(1000) }}",
    "tojson_indent": "{{ messages|tojson(indent=100000000) }}",
    "slice_many": "{{ range(100000)|list|slice(10000000)|list|length }}",
    "dict_fromkeys_loop": "{% set d = dict.fromkeys(range(100000)) %}{% for a in d %}"
                          "{% for b in d %}{% endfor %}{% endfor %}",
    "type_error": "{{ 1 + 'a' }}",
    "zero_division": "{{ 1 // 0 }}",
}
