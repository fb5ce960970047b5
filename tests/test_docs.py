"""The documentation stays inside the repository and true to it.

Every Markdown file a comment, a docstring, a data file's ``_source`` note or a page cites must exist in
the repository (a newcomer cannot follow a citation to a file they do not have); links between pages
must land on a file and a heading that exist; every decision record is indexed and complete; and the ER7
reader benchmark, whose figures a decision record quotes, still runs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where the project's own text lives; third-party material (tests/corpus) and generated output are left out.
SCANNED = ("services", "shared", "docs", "bench", "scripts", "tests")
SKIPPED = (ROOT / "tests" / "corpus", ROOT / "tests" / "golden")
SUFFIXES = {".py", ".md", ".json", ".sh", ".toml", ".yml", ".yaml", ".txt", ""}
URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
MD_CITATION = re.compile(r"(?<![\w/.-])((?:\.{1,2}/)*[\w-]+(?:/[\w.-]+)*\.md)(?![\w-])")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)
DECISIONS = ROOT / "docs" / "decisions"


def _project_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "Dockerfile", ROOT / "docker-compose.yml", ROOT / "pyproject.toml"]
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in SUFFIXES and not any(path.is_relative_to(s) for s in SKIPPED):
                files.append(path)
    return [f for f in files if f.exists() and "__pycache__" not in f.parts]


def _inside(path: Path) -> bool:
    return path.resolve().is_relative_to(ROOT)


def _cited_file_exists(citing: Path, cited: str, basenames: set[str]) -> bool:
    for candidate in (citing.parent / cited, ROOT / cited):
        if _inside(candidate) and candidate.is_file():
            return True
    # a bare name ("PROVENANCE.md") names a file of the repository wherever it lies
    return "/" not in cited and cited in basenames


def test_every_cited_markdown_file_is_in_the_repository() -> None:
    files = _project_files()
    basenames = {p.name for p in ROOT.rglob("*.md") if ".venv" not in p.parts and "node_modules" not in p.parts}
    missing = []
    for path in files:
        text = URL.sub("", path.read_text(errors="replace"))
        for match in MD_CITATION.finditer(text):
            if not _cited_file_exists(path, match.group(1), basenames):
                line = text.count("\n", 0, match.start()) + 1
                missing.append(f"{path.relative_to(ROOT)}:{line} cites {match.group(1)}")
    assert not missing, "cited files that are not in the repository:\n" + "\n".join(missing)


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(h) for h in HEADING.findall(page.read_text())}


def test_links_between_pages_land_on_a_file_and_a_heading() -> None:
    pages = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for target in MD_LINK.findall(page.read_text()):
            if URL.match(target) or target.startswith("mailto:"):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part) if file_part else page
            if not _inside(dest) or not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_decision_record_is_indexed_and_complete() -> None:
    records = sorted(DECISIONS.glob("[0-9][0-9][0-9][0-9]-*.md"))
    assert len(records) >= 7
    index = (DECISIONS / "README.md").read_text()
    numbers = [r.name[:4] for r in records]
    assert len(set(numbers)) == len(numbers), "two decision records share a number"
    for record in records:
        text = record.read_text()
        assert f"]({record.name})" in index, f"{record.name} is not listed in docs/decisions/README.md"
        assert text.startswith(f"# {record.name[:4]} "), f"{record.name}: the title starts with its number"
        assert re.search(r"^- Date: \d{4}-\d{2}-\d{2}", text, re.MULTILINE), f"{record.name}: no date"
        for section in ("## Context", "## Decision", "## Consequences"):
            assert section in text, f"{record.name}: no {section!r} section"


def test_er7_reader_benchmark_runs_and_both_readers_agree() -> None:
    """A tiny run of ``bench/er7_reader.py``: it still imports the readers it measures, and the lean reader
    and hl7apy read the same fields from every message (the comparison is of like with like)."""
    done = subprocess.run(
        [sys.executable, "bench/er7_reader.py", "--messages", "3", "--seconds", "0.05", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("3/3 messages read alike") == 2, done.stdout
    for reader in ("intake header", "er7 parse+read", "hl7apy parse+read"):
        assert reader in done.stdout
    assert "SUMMARY" in done.stdout
