"""No production module (under shared/ or services/) is longer than ``LIMIT`` lines.

A long module usually holds several concerns, and the next person cannot find the room for a change by
its name: split it along its own sections (as ``services/mapper/hl7/segments/`` and ``datatypes/`` are).
The modules still over the limit are listed in ``OVER_LIMIT`` with their length when they were listed;
they may shrink but not grow, and an entry must be removed once its module is within the limit, so the
list can only get shorter. No database, no sockets: this reads the source files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shared", "services")
LIMIT = 450

# Modules over the limit today (path: its length in lines then). Each is a ceiling, not a licence:
# split the module and delete its line here; never raise a number or add a module.
OVER_LIMIT: dict[str, int] = {
    # the FHIR create / Bundle intake flow: validation, normalisation, transactions, store
    "services/intake/fhir_intake.py": 626,
    # the resource writer: versions, history, outbox events, message outcomes
    "services/mapper/writer.py": 477,
}


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
    over = {path: n for path, n in module_lengths().items() if n > LIMIT and path not in OVER_LIMIT}
    assert not over, f"modules over {LIMIT} lines (split them along their sections): {over}"


@pytest.mark.parametrize("path", sorted(OVER_LIMIT))
def test_listed_module_does_not_grow(path: str) -> None:
    lengths = module_lengths()
    assert path in lengths, f"{path} is gone: remove it from OVER_LIMIT"
    assert lengths[path] <= OVER_LIMIT[path], (
        f"{path} grew to {lengths[path]} lines (listed at {OVER_LIMIT[path]}): split it instead"
    )
    assert lengths[path] > LIMIT, f"{path} is within {LIMIT} lines now ({lengths[path]}): remove it from OVER_LIMIT"
