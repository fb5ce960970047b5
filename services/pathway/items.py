"""The referral information items of an MSCC referral (``data/mscc-supporting-info.json``): neurological
status, motor power, sensory level, sphincter function, mobility, pain, steroids, prior radiotherapy,
WHO performance status, SINS, primary cancer.

Each item has a key (its code in the hub's LOCAL code system, never presented as SNOMED CT), a display,
codes and text patterns. The HL7v2 mapping recognises an OBX by them (``services/mapper/hl7/
supporting.py``, which adds each sender's own OBX-3 codes); ``item_of_concept`` recognises a FHIR
Observation's code by them. Nothing here raises on odd input: a concept of any shape names no item or
one; a missing or malformed data file fails loudly at first use.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import data_files

_TABLE = "mscc-supporting-info"


@dataclass(frozen=True)
class Item:
    """One kind of referral information (a row of the data file)."""

    key: str
    display: str
    codes: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]


@functools.cache
def items() -> tuple[Item, ...]:
    """Every item, in the order they are tried."""
    data = data_files.load(_TABLE)
    return tuple(
        Item(
            row["key"],
            row["display"],
            frozenset(c.upper() for c in row["codes"]),
            tuple(re.compile(p, re.IGNORECASE) for p in row["patterns"]),
        )
        for row in data["items"]
    )


def local_system() -> str:
    """The hub's LOCAL code system of the items (each item's key is its code)."""
    return str(data_files.load(_TABLE)["system"])


def _strings(*values: Any) -> list[str]:
    return [v for v in values if isinstance(v, str) and v.strip()]


def _concept(concept: Any) -> tuple[set[str], str]:
    """The codes (upper-cased) and texts of a CodeableConcept of any shape; nothing when malformed."""
    if not isinstance(concept, dict):
        return set(), ""
    raw = concept.get("coding")
    codings: list[Any] = raw if isinstance(raw, list) else []
    codes = {c["code"].upper() for c in codings if isinstance(c, dict) and isinstance(c.get("code"), str)}
    texts = _strings(concept.get("text"), *(c.get("display") for c in codings if isinstance(c, dict)))
    return codes, " ".join(texts)


def item_of_concept(concept: Any) -> Item | None:
    """The item a FHIR ``Observation.code`` names: the hub's local code (the item key) or one of the
    item's codes, else its text or display by the item's patterns."""
    codes, text = _concept(concept)
    for item in items():
        if item.key.upper() in codes or codes & item.codes:
            return item
    return next((item for item in items() if any(p.search(text) for p in item.patterns)), None) if text else None


def fhir_value_text(observation: Mapping[str, Any]) -> str:
    """An Observation's value as text, whatever its type (string, concept, quantity, integer,
    boolean); "" when it has none or it is malformed."""
    for key in ("valueString", "valueInteger", "valueBoolean", "valueCodeableConcept", "valueQuantity"):
        value = observation.get(key)
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, (str, int, float)):
            return str(value).strip()
        if key == "valueCodeableConcept" and isinstance(value, dict):
            codes, text = _concept(value)
            return text or " ".join(sorted(codes))
        if key == "valueQuantity" and isinstance(value, dict) and isinstance(value.get("value"), (int, float)):
            return " ".join(str(x) for x in (value["value"], value.get("unit")) if x is not None)
    return ""
