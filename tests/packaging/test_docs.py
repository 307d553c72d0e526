"""The documentation holds together: the README stays a short guide, and every relative link
in README.md and docs/*.md reaches a file (and, for a `#section`, a heading) that exists.
Oracle: the files on disk, and the anchors GitHub derives from each page's own headings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 450
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _prose(path: Path) -> list[tuple[int, str]]:
    """The page's lines outside fenced code blocks, numbered from 1."""
    out, fenced = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            out.append((number, line))
    return out


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text without markup, lower case, punctuation
    other than `-` and `_` dropped, spaces turned into hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for _, line in _prose(path):
        if m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line):
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            anchors.add(slug if n == 0 else f"{slug}-{n}")
            seen[slug] = n + 1
    return anchors


def _links():
    for page in PAGES:
        for number, line in _prose(page):
            for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
                if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, mailto:, ...
                    yield page, number, target


def test_readme_is_a_short_guide():
    """README.md is at most 450 lines; the reference material lives in docs/."""
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"
    assert (ROOT / "docs" / "README.md").is_file(), "docs/README.md, the index, is missing"


def test_every_page_is_in_the_index():
    """Each docs/*.md page is linked from the index docs/README.md."""
    index = {t.split("#")[0] for p, _, t in _links() if p == ROOT / "docs" / "README.md"}
    missing = [p.name for p in PAGES[1:] if p.name != "README.md" and p.name not in index]
    assert not missing, f"docs/README.md does not link {missing}"


@pytest.mark.parametrize(("page", "number", "target"), list(_links()),
                         ids=lambda v: v.name if isinstance(v, Path) else str(v))
def test_relative_link_resolves(page, number, target):
    """The link's file exists (relative to its page); a `#fragment` names a heading there."""
    where = f"{page.relative_to(ROOT)}:{number} -> {target}"
    path, _, fragment = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    assert dest.exists(), f"{where}: no such file"
    if fragment and dest.suffix == ".md":
        assert fragment in _anchors(dest), f"{where}: no heading gives #{fragment}"
