"""No library function is longer than MAX_LINES lines (the developers' guide; issue #26).
Oracle: every `def` / `async def` of every module of the library folders (methods and
nested functions included), measured with `ast` from its `def` line to its last line."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 80
# the package's source folders (pyproject's package-dir); tests/, tools/ and benchmarks/ are
# scripts, not library code
LIBRARY = ("core", "cli", "scr_ref", "export", "runtime", "parity", "builder", "bench",
           "serve", "plugins")
# "folder/file.py:qualified.name" -> why it is still over the limit. Each entry must still be
# over it (the test fails otherwise), so the list empties as the functions are split.
KNOWN_OVER: dict[str, str] = {}


def _functions(tree: ast.AST, prefix: str = ""):
    """(qualified name, node) of every function under `tree`, methods and nested ones too."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def _sizes() -> dict[str, int]:
    """"folder/file.py:qualified.name" -> lines, for every library function."""
    out = {}
    for folder in LIBRARY:
        paths = sorted((ROOT / folder).rglob("*.py"))
        assert paths, f"no Python files under {folder}/"
        for path in paths:
            rel = path.relative_to(ROOT).as_posix()
            for name, node in _functions(ast.parse(path.read_text(), str(path))):
                out[f"{rel}:{name}"] = node.end_lineno - node.lineno + 1
    return out


def test_no_library_function_is_over_the_limit():
    """Oracle: ast line spans of every library function; KNOWN_OVER lists the exceptions."""
    over = {name: n for name, n in _sizes().items() if n > MAX_LINES and name not in KNOWN_OVER}
    assert not over, (f"functions over {MAX_LINES} lines (split them into named helpers): "
                      + ", ".join(f"{name} ({n})" for name, n in sorted(over.items())))


def test_the_known_exceptions_are_still_over_the_limit():
    """Oracle: the same ast line spans; an entry of KNOWN_OVER that is split (or gone) must
    leave the list, so the list never hides a new long function under an old name."""
    sizes = _sizes()
    stale = [name for name in KNOWN_OVER if sizes.get(name, 0) <= MAX_LINES]
    assert not stale, f"remove from KNOWN_OVER (no longer over {MAX_LINES} lines): {stale}"


def test_the_measure_counts_a_function_from_def_to_last_line():
    """Oracle: a source written here with known lengths (a method, a nested function)."""
    source = ("class A:\n    def m(self):\n" + "        x = 1\n" * 80 + "\n"
              "def f():\n    def g():\n        return 1\n    return g\n")
    sizes = {name: node.end_lineno - node.lineno + 1
             for name, node in _functions(ast.parse(source))}
    assert sizes == {"A.m": 81, "f": 4, "f.g": 2}
