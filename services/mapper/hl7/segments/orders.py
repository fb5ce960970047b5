"""ORC, OBR -> imaging orders and reports: the UK Core ServiceRequest (the order, e.g. the MRI request)
and DiagnosticReport; and DG1 after an order -> a reason for it.

An order or report without a placer or filler number gets a message-scoped id (MSH-10), with a warning
for the order: later messages cannot update it. A result status outside table 0123 is a warning, and
the report's status is then "unknown".
"""

from __future__ import annotations

from typing import Any

from shared.ids import resource_id

from ...model import Resource
from .. import tables
from ..context import Context
from ..datatypes import Json
from ..datatypes.codes import cwe_concept
from ..datatypes.demographics import xtn_contact
from ..datatypes.identifiers import Systems, ei_identifier
from ..datatypes.references import xcn_reference, xon_reference
from ..reader import Seg
from .common import id_from, practitioner_role, profile, ref, request_id

V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"


def order_numbers(orc: Seg | None, obr: Seg | None, systems: Systems) -> tuple[Json | None, Json | None]:
    """The placer (ORC-2, else OBR-2) and filler (ORC-3, else OBR-3) order numbers."""
    found: list[Json | None] = []
    for number, kind in ((2, "PLAC"), (3, "FILL")):
        source = next((seg for seg in (orc, obr) if seg is not None and seg.has(number)), None)
        found.append(ei_identifier(source.composite(number), systems, kind) if source else None)
    return found[0], found[1]


def _order_status(orc: Seg | None) -> str:
    # ORC-1 (order control) decides, unless it only says the status changed: then ORC-5.
    if orc is None:
        return "active"
    control = orc.value(1).upper()
    status = tables.text("v2-0119-order-control", control) if control != "SC" else None
    return status or tables.text("v2-0038-order-status", orc.value(5)) or "active"


def _order_priority(orc: Seg | None, obr: Seg | None) -> str | None:
    # TQ-1.6 priority (table 0027: S, A, R share 0280's meaning) in ORC-7, else OBR-27.
    for seg, number in ((orc, 7), (obr, 27)):
        if seg is not None and seg.has(number):
            priority = tables.text("v2-0280-referral-priority", seg.composite(number).c(6))
            if priority:
                return priority
    return None


def _orderer(orc: Seg | None, obr: Seg | None, ctx: Context) -> tuple[Json | None, Resource | None]:
    """ORC-12 (else OBR-16) ordering provider; with ORC-21 (ordering facility) a contained role."""
    person = None
    for seg, number in ((orc, 12), (obr, 16)):
        if seg is not None and person is None and seg.has(number):
            person = xcn_reference(seg.composite(number), ctx.systems)
    if orc is None or not orc.has(21):
        return person, None
    organization = xon_reference(orc.composite(21), ctx.systems)
    telecom = [t for t in (xtn_contact(x, "work") for x in orc.composites(14)) if t]
    role = practitioner_role("orderer", None, person, organization, telecom)
    return ({"reference": "#orderer"}, role) if role else (person, None)


def order(orc: Seg | None, obr: Seg | None, ctx: Context, subject: Json) -> Resource:
    """ORC/OBR -> UK Core ServiceRequest (the order, e.g. the MRI request): ids placer/filler/group (ORC-4),
    status ORC-1/ORC-5, code OBR-4, reason OBR-31, priority ORC-7/OBR-27, authoredOn ORC-9."""
    for seg in (orc, obr):
        if seg is not None:
            ctx.take(seg)
    placer, filler = order_numbers(orc, obr, ctx.systems)
    group = ei_identifier(orc.composite(4), ctx.systems, "PGN") if orc is not None else None
    identifiers = [i for i in (placer, filler, group) if i]
    resource: Resource = {
        "resourceType": "ServiceRequest",
        "id": request_id(identifiers, ctx, "ORC-2" if orc else "OBR-2"),
        "meta": profile("ServiceRequest"),
        "status": _order_status(orc),
        "intent": "order",
        "subject": subject,
    }
    requester, role = _orderer(orc, obr, ctx)
    authored = ctx.time(orc, 9) if orc is not None else None
    optional: dict[str, Any] = {
        "contained": [role] if role else [],
        "identifier": identifiers,
        "priority": _order_priority(orc, obr),
        "code": cwe_concept(obr.composite(4)) if obr is not None else None,
        "reasonCode": [c for c in (cwe_concept(x) for x in obr.composites(31)) if c] if obr is not None else [],
        "authoredOn": authored.value if authored else None,
        "requester": requester,
    }
    resource.update({k: v for k, v in optional.items() if v})
    return resource


def report(obr: Seg, orc: Seg | None, ctx: Context, subject: Json, based_on: str) -> Resource:
    """OBR -> UK Core DiagnosticReport: status OBR-25 (table 0123), code OBR-4, category OBR-24
    (table 0074), effective OBR-7, issued OBR-22; ids from the filler (else placer) number."""
    ctx.take(obr)
    placer, filler = order_numbers(orc, obr, ctx.systems)
    identifiers = [i for i in (filler, placer) if i]
    # The report is the filler's: its number identifies it; a message-scoped id is the last resort.
    rid = (
        id_from("DiagnosticReport", identifiers[0])
        if identifiers
        else resource_id(
            "DiagnosticReport",
            ctx.systems.local(ctx.header.facility),
            f"message:{ctx.header.control_id}:{obr.occurrence}",
        )
    )
    status = _code_lookup(obr, 25, "v2-0123-result-status", ctx)
    resource: Resource = {
        "resourceType": "DiagnosticReport",
        "id": rid,
        "meta": profile("DiagnosticReport"),
        "status": status or "unknown",
        "code": cwe_concept(obr.composite(4)) or {"text": "Report"},
        "subject": subject,
        "basedOn": [ref("ServiceRequest", based_on)],
    }
    effective, issued = ctx.time(obr, 7), ctx.time(obr, 22)
    section = obr.value(24)
    optional: dict[str, Any] = {
        "identifier": identifiers,
        "category": [{"coding": [{"system": V2_0074, "code": section}]}] if section else [],
        "effectiveDateTime": effective.value if effective else None,
        # issued is an instant: only a time with seconds and offset qualifies, not a bare date.
        "issued": issued.value if issued and issued.moment else None,
    }
    resource.update({k: v for k, v in optional.items() if v})
    return resource


def _code_lookup(seg: Seg, number: int, table: str, ctx: Context) -> str | None:
    code = seg.value(number)
    target = tables.text(table, code)
    if code and target is None:
        ctx.warn(f"{seg.name}-{number} {code!r} is not in {table}; left out", f"{seg.name}-{number}")
    return target


def diagnosis(dg1: Seg, ctx: Context) -> Json | None:
    """DG1 -> a reason (CodeableConcept): DG1-3 code, else DG1-4 description as text."""
    ctx.take(dg1)
    concept = cwe_concept(dg1.composite(3))
    if concept is None and dg1.text(4):
        concept = {"text": dg1.text(4)}
    return concept
