"""The docs hold together: links resolve, cited tests exist, nothing points outside the repository."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Where the project's text lives: what the citation and reference checks scan.
SCANNED = ["README.md", "docs", "src", "workflow", "tests", "scripts", "config", "benchmarks", "Makefile"]
#: Names of documents outside the repository that the project must not cite (split so this file passes).
OUTSIDE = ["PIT" + "FALLS", "ARCHI" + "TECTURE", "../" + "shared"]

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"`+[^`]*`+")
CITED_TEST = re.compile(r"tests/(test_\w+\.py)::(test_\w+)")
DOC_ANCHOR = re.compile(r"docs/([\w-]+\.md)#([\w-]+)")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    kept = (c for c in text if c in " -_" or unicodedata.category(c)[0] in "LMN")
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, repeated headings numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every markdown link outside code."""
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            found.append((number, target))
    return found


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with the relative links of one markdown file, one line per broken link."""
    problems = []
    for number, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        where = f"{path.relative_to(root)}:{number}: {target}"
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.is_relative_to(root):
            problems.append(f"{where}: points outside the repository")
        elif not linked.exists():
            problems.append(f"{where}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{where}: no heading with anchor #{anchor}")
    return problems


def scanned_files() -> list[Path]:
    files = []
    for name in SCANNED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        for file in candidates:
            parts = file.relative_to(ROOT).parts
            if file.is_file() and "__pycache__" not in parts and not any(p.startswith(".") for p in parts):
                files.append(file)
    return files


def test_slug_follows_github() -> None:
    assert slug("What bitro refuses, and the choices") == "what-bitro-refuses-and-the-choices"
    assert slug("HEST-1k sample (`{root}/`)") == "hest-1k-sample-root"
    assert slug("CellViT++ in its own environment") == "cellvit-in-its-own-environment"
    assert slug("1. The venv: `scripts/cellvit/build_venv.sh`") == "1-the-venv-scriptscellvitbuild_venvsh"
    assert slug("Pixel size read, never assumed") == "pixel-size-read-never-assumed"


def test_the_checker_finds_a_broken_link_and_a_broken_anchor(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "doctor.md").write_text("# Preflight: `bitro doctor`\n## What is checked\n")
    probe = tmp_path / "docs" / "probe.md"
    probe.write_text(
        "# Probe\n\n[ok](doctor.md#what-is-checked) [gone](missing.md) [bad](doctor.md#no-such-heading)\n"
        "[self](#probe) `[code](missing.md)` [out](../../outside.md) [web](https://example.org/x.md)\n"
        "```\n[in a code block](missing.md)\n```\n",
        encoding="utf-8",
    )
    problems = broken_links(probe, root=tmp_path)
    assert len(problems) == 3, problems
    assert "no such file" in problems[0] and "#no-such-heading" in problems[1]
    assert "outside the repository" in problems[2]


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_no_document_outside_the_repository_is_cited() -> None:
    hits = []
    for file in scanned_files():
        data = file.read_bytes()
        for name in OUTSIDE:
            if name.encode() in data:
                hits.append(f"{file.relative_to(ROOT)}: {name}")
    assert hits == []


def test_every_test_the_docs_name_exists() -> None:
    missing = []
    for page in DOCS:
        for file, name in CITED_TEST.findall(page.read_text(encoding="utf-8")):
            test_file = ROOT / "tests" / file
            source = test_file.read_text(encoding="utf-8") if test_file.is_file() else ""
            if not re.search(rf"^\s*(async\s+)?def {name}\(", source, re.MULTILINE):
                missing.append(f"{page.relative_to(ROOT)}: tests/{file}::{name}")
    assert missing == []


def test_pitfalls_each_name_a_test() -> None:
    """Every pitfall (a level-3 heading of docs/pitfalls.md) lists at least one test that guards it."""
    text = (ROOT / "docs" / "pitfalls.md").read_text(encoding="utf-8")
    sections = re.split(r"^### ", text, flags=re.MULTILINE)[1:]
    assert len(sections) >= 20
    unguarded = [s.splitlines()[0] for s in sections if not CITED_TEST.search(s)]
    assert unguarded == []


def test_doc_anchors_named_in_code_exist() -> None:
    broken = []
    for file in scanned_files():
        if file.suffix not in {".py", ".smk", ".yaml", ".yml", ".sh", ""}:
            continue
        for doc, anchor in DOC_ANCHOR.findall(file.read_text(encoding="utf-8", errors="replace")):
            page = ROOT / "docs" / doc
            if not page.is_file() or anchor not in anchors(page):
                broken.append(f"{file.relative_to(ROOT)}: docs/{doc}#{anchor}")
    assert broken == []
