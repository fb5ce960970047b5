"""CE / CWE -> CodeableConcept; HL7 v2 coding system names (CWE.3) -> FHIR systems.

An unknown coding system name becomes a local system (``urn:mscc:code-system:{name}``), never dropped:
the code still says what the sender meant.
"""

from __future__ import annotations

import re

from .. import tables
from ..reader import Composite
from . import Json

LOCAL_CODE_SYSTEM = "urn:mscc:code-system:{name}"
_SLUG = re.compile(r"[^A-Za-z0-9._~-]+")


def code_system(name: str) -> str | None:
    """The FHIR system for an HL7 v2 coding system name (CWE.3); a local one when unknown."""
    if not name:
        return None
    known = tables.text("coding-systems", name)
    if known:
        return known
    table = re.fullmatch(r"HL7(\d{4})", name.upper())
    if table:
        return f"http://terminology.hl7.org/CodeSystem/v2-{table.group(1)}"
    return LOCAL_CODE_SYSTEM.format(name=_SLUG.sub("-", name).strip("-"))


def _coding(code: str, display: str, system_name: str) -> Json | None:
    if not code:
        return None
    coding: Json = {"code": code}
    system = code_system(system_name)
    if system:
        coding["system"] = system
    if display:
        coding["display"] = display
    return coding


def cwe_concept(cwe: Composite) -> Json | None:
    """CE/CWE -> CodeableConcept: the primary (1-3) and alternate (4-6) codings, text from CWE.9 (or
    the primary text when there is no code); None when empty."""
    codings = [c for c in (_coding(cwe.c(1), cwe.c(2), cwe.c(3)), _coding(cwe.c(4), cwe.c(5), cwe.c(6))) if c]
    concept: Json = {}
    if codings:
        concept["coding"] = codings
    text = cwe.c(9) or ("" if codings else cwe.c(2) or cwe.c(5))
    if text:
        concept["text"] = text
    return concept or None


def concept_text(cwe: Composite) -> str:
    """The human-readable part of a CE/CWE: original text, else the display, else the code."""
    return cwe.c(9) or cwe.c(2) or cwe.c(5) or cwe.c(1)
