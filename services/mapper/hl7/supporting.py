"""Supporting information on a referral: the OBX segments of a REF message.

Choice (see docs/mapping.md): every OBX of a REF message becomes an Observation *contained* in the
referral ServiceRequest and listed in ``ServiceRequest.supportingInfo`` (display: what it is and its
value). Contained, because it is a snapshot of what the referrer sent with this referral: it has no
identity of its own and is replaced with the referral on REF^I13. An NTE after an OBX is its note.

OBX items of the MSCC minimum data (neurological status, mobility, pain, steroids, prior radiotherapy,
WHO performance status, SINS) are the pathway's referral information items (``services/pathway/items.py``,
``services/pathway/data/mscc-supporting-info.json``), recognised here by OBX-3 codes, then OBX-3 text
patterns (senders' own codes come from ``SenderConfig.supporting_info_codes``), and get an extra coding
in the hub's LOCAL code system: never a SNOMED CT code. The neurological status read from them (by the
pathway's reading, ``services/pathway/neurological.py``) drives the MRI deadline: the neurological items
(the overall status, motor power, sensory level, sphincter function) are each read by what they
measure; any other OBX counts only when its text names a sign ("Mobility: unsteady on feet"). When
nothing says, the status is "unknown" (and the 24 hour window applies).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.pathway.items import Item, items, local_system
from services.pathway.neurological import Neurological, combine, item_reading

from ..model import Resource
from . import tables
from .context import Context
from .datatypes import Json
from .datatypes.codes import concept_text, cwe_concept
from .reader import Composite, Seg
from .segments.notes import note

_NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?$")


def classify(code: Composite, extra: Mapping[str, str]) -> Item | None:
    """The item an OBX-3 names: the sender's own codes first, then the table's codes, then its text."""
    idents = {code.c(1).upper(), code.c(4).upper()} - {""}
    by_key = {item.key: item for item in items()}
    sender = {k.upper(): v for k, v in extra.items()}
    for ident in sorted(idents):
        if ident in sender and sender[ident] in by_key:
            return by_key[sender[ident]]
    for item in items():
        if idents & item.codes:
            return item
    text = " ".join(t for t in (code.c(2), code.c(5), code.c(9)) if t)
    return next((item for item in items() if any(p.search(text) for p in item.patterns)), None)


def _quantity(obx: Seg) -> Json | None:
    raw = obx.value(5)
    if not _NUMBER.match(raw):
        return None
    number: float | int = float(raw) if "." in raw else int(raw)
    quantity: Json = {"value": number}
    unit = obx.composite(6)
    if unit.c(1) or unit.c(2):
        quantity["unit"] = unit.c(2) or unit.c(1)
    if unit.c(3).upper() == "UCUM" and unit.c(1):
        quantity.update(system="http://unitsofmeasure.org", code=unit.c(1))
    return quantity


def obx_value(obx: Seg, ctx: Context) -> tuple[str, Any] | None:
    """OBX-5 by its type OBX-2: NM -> Quantity, CE/CWE/CNE -> CodeableConcept, DT/TS/DTM -> dateTime,
    anything else (ST, TX, FT, SN...) -> string; an NM that is not a number stays a string."""
    kind = obx.value(2).upper()
    if kind == "NM":
        quantity = _quantity(obx)
        if quantity:
            return "valueQuantity", quantity
    elif kind in ("CE", "CWE", "CNE"):
        concept = cwe_concept(obx.composite(5))
        if concept:
            return "valueCodeableConcept", concept
    elif kind in ("DT", "TS", "DTM"):
        when = ctx.time(obx, 5)
        return ("valueDateTime", when.value) if when else None
    text = obx.text(5).replace(obx.segment.seps.component, " ").strip()
    return ("valueString", text) if text else None


def value_text(value: tuple[str, Any] | None) -> str:
    """A value as one line of text, for displays and for reading the neurological status."""
    if value is None:
        return ""
    key, data = value
    if key == "valueQuantity":
        return f"{data['value']} {data.get('unit', '')}".strip()
    if key == "valueCodeableConcept":
        coding = (data.get("coding") or [{}])[0]
        return str(data.get("text") or coding.get("display") or coding.get("code") or "")
    return str(data)


def _code(obx: Seg, item: Item | None) -> Json:
    concept = cwe_concept(obx.composite(3)) or {"text": item.display if item else "Referral information"}
    if item:
        local = {"system": local_system(), "code": item.key, "display": item.display}
        concept = {**concept, "coding": [*concept.get("coding", []), local]}
    return concept


def observation(obx: Seg, notes: list[Seg], ctx: Context, subject: Json, local_id: str) -> tuple[Resource, Item | None]:
    """One OBX (+ its NTEs) -> a contained Observation; status from OBX-11 (table 0085)."""
    ctx.take(obx)
    item = classify(obx.composite(3), ctx.sender.supporting_info_codes)
    resource: Resource = {
        "resourceType": "Observation",
        "id": local_id,
        "status": tables.text("v2-0085-observation-status", obx.value(11)) or "unknown",
        "code": _code(obx, item),
        "subject": subject,
    }
    value = obx_value(obx, ctx)
    if value:
        resource[value[0]] = value[1]
    when = ctx.time(obx, 14)
    if when:
        resource["effectiveDateTime"] = when.value
    annotations = [a for a in (note(n, ctx) for n in notes) if a]
    if annotations:
        resource["note"] = annotations
    return resource, item


@dataclass
class SupportingInfo:
    """What the OBX segments of a referral add to it."""

    contained: list[Resource] = field(default_factory=list)
    references: list[Json] = field(default_factory=list)
    neurological: Neurological = "unknown"


def supporting_info(groups: list[tuple[Seg, list[Seg]]], ctx: Context, subject: Json) -> SupportingInfo:
    """Each (OBX, its NTEs) -> a contained Observation and a supportingInfo reference."""
    info = SupportingInfo()
    readings: list[Neurological] = []
    for number, (obx, notes) in enumerate(groups, start=1):
        resource, item = observation(obx, notes, ctx, subject, f"info-{number}")
        label = item.display if item else concept_text(obx.composite(3)) or "Referral information"
        text = value_text(next(((k, v) for k, v in resource.items() if k.startswith("value")), None))
        info.contained.append(resource)
        info.references.append({"reference": f"#{resource['id']}", "display": f"{label}: {text}" if text else label})
        reading = item_reading(item, text)
        if reading is not None:
            readings.append(reading)
    info.neurological = combine(readings)
    return info
