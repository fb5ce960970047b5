"""No production module (under shared/ or services/) is longer than ``LIMIT`` lines.

A long module usually holds several concerns, and the next person cannot find the room for a change by
its name: split it along its own sections (as ``services/mapper/hl7/segments/`` and ``datatypes/`` are).
There is no allow-list: every module is within the limit. No database, no sockets: this reads the
source files.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shared", "services")
LIMIT = 450


def module_lengths() -> dict[str, int]:
    """Every Python module under ``PACKAGES``: its repository path -> its number of lines."""
    found: dict[str, int] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            found[path.relative_to(ROOT).as_posix()] = len(path.read_text(encoding="utf-8").splitlines())
    return found


def test_modules_found() -> None:
    # A wrong root would make every other test here pass vacuously.
    lengths = module_lengths()
    assert "services/mapper/hl7/steps.py" in lengths and "shared/er7.py" in lengths


def test_no_module_over_the_limit() -> None:
    over = {path: n for path, n in module_lengths().items() if n > LIMIT}
    assert not over, f"modules over {LIMIT} lines (split them along their sections): {over}"
