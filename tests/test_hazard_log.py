"""The hazard log stays true: every control names tests, and every test it names exists.

A control whose test was renamed or deleted is no longer evidenced; this test fails until the log is
brought back in line with the code.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOG = ROOT / "docs" / "clinical-safety" / "hazard-log.md"
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
HAZARD = re.compile(r"^## (H\d+)\b", re.MULTILINE)


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    }


def _sections(text: str) -> dict[str, str]:
    marks = list(HAZARD.finditer(text))
    return {
        m.group(1): text[m.end() : marks[i + 1].start() if i + 1 < len(marks) else len(text)]
        for i, m in enumerate(marks)
    }


def test_every_named_test_exists() -> None:
    text = LOG.read_text()
    refs = TEST_REF.findall(text)
    assert len(refs) >= 20, "the hazard log names too few tests to evidence its controls"
    missing = []
    cache: dict[str, set[str]] = {}
    for file, name in refs:
        path = ROOT / file
        if not path.is_file():
            missing.append(f"{file} (no such file)")
            continue
        names = cache.setdefault(file, _test_names(path))
        if name not in names:
            missing.append(f"{file}::{name}")
    assert not missing, f"the hazard log names tests that do not exist: {missing}"


def test_every_hazard_has_controls_with_tests() -> None:
    sections = _sections(LOG.read_text())
    required = {"wrong patient", "wrong referral", "lost", "sla", "clinical content", "wrong trust", "silent"}
    titles = " ".join(line for line in LOG.read_text().lower().splitlines() if line.startswith("## "))
    for word in required:
        assert word in titles, f"no hazard covers {word!r}"
    assert len(sections) >= 7
    for hazard, body in sections.items():
        assert TEST_REF.search(body), f"{hazard} names no test for its controls"
        for heading in ("Cause", "Effect", "Controls", "Residual"):
            assert heading.lower() in body.lower(), f"{hazard} has no {heading}"
