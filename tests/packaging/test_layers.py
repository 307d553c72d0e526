"""The package's layering: lower layers never import higher ones, nothing imports the CLI,
and no contract name is spelled out beside `scredge.contract`. Oracle: every import
statement of every module (lazy ones inside functions included), read with `ast`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# source folder -> its import name (pyproject's package-dir)
PACKAGES = {"core": "scredge", "scr_ref": "scredge.ref", "plugins": "scredge.plugins",
            "runtime": "scredge.runtime", "builder": "scredge.builder",
            "parity": "scredge.parity", "export": "scredge.export", "bench": "scredge.bench",
            "serve": "scredge.serve", "cli": "scredge.cli"}
# what each package may import besides itself and core (`scredge.<module>`)
ALLOWED = {
    "scredge": set(),
    "scredge.ref": set(),
    "scredge.plugins": set(),
    "scredge.runtime": {"scredge.plugins"},
    "scredge.builder": {"scredge.plugins", "scredge.runtime"},
    "scredge.parity": {"scredge.plugins", "scredge.runtime", "scredge.builder", "scredge.ref"},
    "scredge.export": {"scredge.ref", "scredge.runtime"},
    "scredge.bench": {"scredge.runtime", "scredge.ref", "scredge.export"},
    "scredge.serve": {"scredge.runtime"},
    "scredge.cli": set(PACKAGES.values()),
}
SUBPACKAGES = sorted((p for p in PACKAGES.values() if p != "scredge"), key=len, reverse=True)


def _package_of(module: str) -> str | None:
    """The scredge package an imported module belongs to (None: not scredge)."""
    if module != "scredge" and not module.startswith("scredge."):
        return None
    return next((p for p in SUBPACKAGES if module == p or module.startswith(p + ".")),
                "scredge")


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from scredge import contract` names a module of core
            out += [node.module] if node.module != "scredge" else [
                f"scredge.{a.name}" for a in node.names]
    return out


def _sources():
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path, package


@pytest.mark.parametrize(("path", "package"), list(_sources()),
                         ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else "")
def test_imports_follow_the_layers(path, package):
    allowed = ALLOWED[package] | {package, "scredge"}
    if path.name == "__main__.py" and package == "scredge":
        allowed = allowed | {"scredge.cli"}  # `python -m scredge` is the CLI's entry point
    bad = sorted({m for m in _imports(path)
                  if (p := _package_of(m)) is not None and p not in allowed})
    assert not bad, f"{path.relative_to(ROOT)} ({package}) imports a higher layer: {bad}"


# the graph's tensor names and the op's identity, as string literals
CONTRACT_LITERALS = re.compile(
    r"(past_key_values|present|scr_past|scr_present)\..*"
    r"|input_ids|position_ids|plugin_namespace|plugin_version"
    r"|model\.onnx|manifest\.json|model\.safetensors|parity/golden\.npz")


def test_contract_names_are_spelled_once():
    """Outside core/contract.py no library module writes a graph I/O name, op attribute or
    artifact file name as a literal (docstrings and comments aside)."""
    offenders = []
    for path, _ in _sources():
        if path == ROOT / "core" / "contract.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef,
                                        ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr)
                      and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docstrings
                    and CONTRACT_LITERALS.fullmatch(node.value)):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not offenders, "contract names outside scredge.contract:\n" + "\n".join(offenders)


def test_no_source_file_over_450_lines():
    """Python modules stay readable: none over 450 lines (the C++ plugin is exempt)."""
    long = [f"{p.relative_to(ROOT)}: {n}" for p in [*ROOT.glob("*/**/*.py")]
            if ".venv" not in p.parts and "build" not in p.parts
            and (n := len(p.read_text().splitlines())) > 450]
    assert not long, long
