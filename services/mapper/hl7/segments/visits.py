"""PV1, PV2 -> the visit: the UK Core Encounter (class, status, period, participants, locations).

The Encounter's id comes from the visit number (PV1-19, else PV1-50); without one, from the message
(MSH-10), so a later message cannot find it. A discharge before the admission keeps the admission and
drops the impossible end, with a warning.
"""

from __future__ import annotations

from typing import Any

from shared.ids import resource_id

from ...model import Resource
from .. import tables
from ..context import Context
from ..datatypes import Json
from ..datatypes.codes import cwe_concept
from ..datatypes.identifiers import cx_identifier, identifier_type
from ..datatypes.references import hd_reference, pl_display, xcn_reference
from ..reader import Seg
from .common import dedupe, id_from, profile


def _visit_identifiers(pv1: Seg, ctx: Context) -> list[Json]:
    """PV1-19 (visit number, the Encounter's key) then PV1-50 (alternate visit id)."""
    found = []
    for number in (19, 50):
        ident = cx_identifier(pv1.composite(number), ctx.systems)
        if ident and number == 19 and "type" not in ident:
            ident["type"] = identifier_type("VN")
        if ident:
            found.append(ident)
    return dedupe(found)


def encounter_id(ident: Json | None, ctx: Context) -> str:
    """From PV1-19 (else PV1-50), qualified by its authority or the sending facility; else from MSH-10
    (then an A03 cannot find the A01's Encounter: senders without visit numbers get one per message)."""
    if ident:
        return id_from("Encounter", ident)
    return resource_id("Encounter", ctx.systems.local(ctx.header.facility), f"message:{ctx.header.control_id}")


def _participants(pv1: Seg, ctx: Context) -> list[Json]:
    roles = ((7, "ATND", "attender"), (8, "REF", "referrer"), (9, "CON", "consultant"), (17, "ADM", "admitter"))
    out = []
    for number, code, display in roles:
        for xcn in pv1.composites(number):
            person = xcn_reference(xcn, ctx.systems)
            if person:
                coding = {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                    "code": code,
                    "display": display,
                }
                out.append({"type": [{"coding": [coding]}], "individual": person})
    return out


def _locations(pv1: Seg) -> list[Json]:
    # PV1-3 where the patient is now; PV1-6 where they were before (a transfer).
    out = []
    for number, status in ((3, "active"), (6, "completed")):
        place = pl_display(pv1.composite(number))
        if place:
            out.append({"location": {"display": place}, "status": status})
    return out


def _encounter_class(pv1: Seg, ctx: Context) -> tuple[Json, str]:
    code = pv1.value(2)
    entry = tables.lookup("v2-0004-patient-class", code)
    if not isinstance(entry, dict):
        if code:
            ctx.warn(f"PV1-2 {code!r} is not in table 0004; class unknown", "PV1-2")
        entry = tables.lookup("v2-0004-patient-class", "U")
    return {k: entry[k] for k in ("system", "code", "display")}, str(entry["status"])


def _period(pv1: Seg, ctx: Context) -> Json:
    start, end = ctx.time(pv1, 44), ctx.time(pv1, 45)
    period = {k: t.value for k, t in (("start", start), ("end", end)) if t}
    # A discharge before the admission is a data error: keep the start, drop the impossible end.
    if start and end and start.moment and end.moment and end.moment < start.moment:
        ctx.warn("PV1-45 (discharge) is before PV1-44 (admission); period end left out", "PV1-45")
        period.pop("end")
    return period


def encounter(pv1: Seg, pv2: Seg | None, ctx: Context, subject: Json, status: str | None = None) -> Resource:
    """PV1 (+PV2) -> UK Core Encounter. ``status`` comes from the trigger event; None derives it:
    PV1-45 (discharged) -> finished, else the patient class default (table 0004)."""
    ctx.take(pv1)
    identifiers = _visit_identifiers(pv1, ctx)
    klass, class_status = _encounter_class(pv1, ctx)
    period = _period(pv1, ctx)
    resource: Resource = {
        "resourceType": "Encounter",
        "id": encounter_id(identifiers[0] if identifiers else None, ctx),
        "meta": profile("Encounter"),
        "status": status or ("finished" if "end" in period else class_status),
        "class": klass,
        "subject": subject,
    }
    optional: dict[str, Any] = {
        "identifier": identifiers,
        "period": period,
        "participant": _participants(pv1, ctx),
        "location": _locations(pv1),
        "reasonCode": _admit_reasons(pv2, ctx),
        "serviceProvider": _provider(ctx),
    }
    resource.update({k: v for k, v in optional.items() if v})
    return resource


def _provider(ctx: Context) -> Json | None:
    # The sending facility (MSH-4) runs the visit; named only when it is an ODS code.
    found = hd_reference(ctx.msh().composite(4), ctx.systems)
    return found if found and "identifier" in found else None


def _admit_reasons(pv2: Seg | None, ctx: Context) -> list[Json]:
    if pv2 is None:
        return []
    ctx.take(pv2)
    return [c for c in (cwe_concept(x) for x in pv2.composites(3)) if c]
