"""Every relative link in README.md and docs/*.md points to a file that exists, and every
#anchor to a heading of that file (GitHub's heading ids)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (links there are not links)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(lines)


def slug(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The ids of a Markdown page's headings (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose(page.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(page: Path) -> list[str]:
    """The relative links of `page` whose file, or heading, is not there."""
    bad = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            bad.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            bad.append(f"{target}: no heading #{anchor} in {file.name}")
    return bad


def test_slug_is_githubs():
    assert slug("## `gemma-ref dump`".lstrip("# ").replace("`", "")) == "gemma-ref-dump"
    assert slug("Gemma 1 7B shapes, bfloat16 (random weights, 17.1 GB)") == \
        "gemma-1-7b-shapes-bfloat16-random-weights-171-gb"
    assert slug("The front page's speed table, and how to read it") == \
        "the-front-pages-speed-table-and-how-to-read-it"


def test_the_checker_finds_a_broken_link(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n\n## Two words\n\n## Two words\n")
    page = tmp_path / "p.md"
    page.write_text("[ok](a.md) [ok](a.md#two-words-1) [ok](#here) [web](https://x.org/y.md)\n"
                    "# Here\n[gone](b.md) [no heading](a.md#three) `[code](c.md)`\n"
                    "```\n[fenced](d.md)\n```\n")
    assert broken_links(page) == ["b.md: no such file", "a.md#three: no heading #three in a.md"]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []
