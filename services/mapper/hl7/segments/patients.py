"""PID, PD1, MRG -> who the patient is: the UK Core Patient, its identifiers and id, a merge's old ids.

The NHS number is read where the sender's configuration says (``MappingConfig.nhs_number_location``);
one that fails the modulus 11 check is kept under a local system with a warning, never trusted. A
patient without any identifier gets a message-scoped id and a warning: a referral is never lost.
"""

from __future__ import annotations

from typing import Any

from shared.ids import resource_id
from shared.nhs import (
    INVALID_NHS_NUMBER_SYSTEM,
    NHS_NUMBER_SYSTEM,
    is_valid_nhs_number,
    normalise_nhs_number,
    redact_nhs_number,
)

from ...model import Resource
from .. import tables
from ..context import Context
from ..datatypes import Json
from ..datatypes.demographics import xad_address, xpn_name, xtn_contact
from ..datatypes.identifiers import cx_identifier, nhs_number_identifier
from ..datatypes.references import xcn_reference, xon_reference
from ..reader import Composite, Seg
from .common import dedupe, id_from, profile


def _is_nhs_number(cx: Composite, role: str, location: str) -> bool:
    """Whether this CX is where the sender's NHS number sits (MappingConfig.nhs_number_location)."""
    if location == "PID-2":
        return role == "external"
    if location == "PID-3 NHSNMBR":
        return role == "primary" and cx.c(5).upper() == "NHSNMBR"
    # HL7 UK profile: CX.5 "NH" (identifier type) or CX.4 "NHS" (assigning authority).
    return role == "primary" and (cx.c(5).upper() == "NH" or cx.part(4).c(1).upper() == "NHS")


def _nhs_status(pid: Seg | None) -> str:
    """PID-32 "NSTS01".."NSTS08" (HL7 UK) or a bare "01".."08"; "" when not sent."""
    if pid is None:
        return ""
    for rep in pid.composites(32):
        code = rep.c(1).upper().removeprefix("NSTS")
        if tables.text("nhs-number-status", code):
            return code
    return ""


def _nhs_identifier(cx: Composite, status: str, ctx: Context, where: str) -> Json:
    number = normalise_nhs_number(cx.c(1))
    if is_valid_nhs_number(number):
        return nhs_number_identifier(number, True, status)
    # An invalid NHS number is kept, under a local system, and flagged: never dropped, never trusted.
    ctx.warn(
        f"{where}: NHS number {redact_nhs_number(number)} fails the modulus 11 check; "
        f"kept as a local identifier ({INVALID_NHS_NUMBER_SYSTEM})",
        where,
    )
    return nhs_number_identifier(cx.c(1), False)


def person_identifiers(seg: Seg, fields: dict[str, int], ctx: Context, status: str = "") -> list[Json]:
    """Identifiers of a PID (primary PID-3, external PID-2, alternate PID-4) or MRG (MRG-1, MRG-4,
    MRG-2), the NHS number found where the sender's configuration says."""
    location = ctx.sender.nhs_number_location
    out: list[Json] = []
    for role in ("primary", "external", "alternate"):
        number = fields[role]
        for cx in seg.composites(number):
            # A repetition with type or authority but no value (CX.1) identifies nothing.
            if not cx.c(1):
                continue
            if _is_nhs_number(cx, role, location):
                out.append(_nhs_identifier(cx, status, ctx, f"{seg.name}-{number}"))
            else:
                ident = cx_identifier(cx, ctx.systems)
                if ident:
                    out.append(ident)
    # The NHS number first, wherever the sender put it: it is the patient's primary identifier.
    return dedupe(sorted(out, key=lambda i: i["system"] != NHS_NUMBER_SYSTEM))


PID_FIELDS = {"primary": 3, "external": 2, "alternate": 4}
MRG_FIELDS = {"primary": 1, "external": 4, "alternate": 2}


def patient_id(identifiers: list[Json], sender_system: str = "") -> str | None:
    """From the NHS number when valid, else the first identifier that is not a failed NHS number (local
    identifiers are already scoped by their trust). A failed NHS number alone identifies nobody across
    trusts: the id is then scoped by ``sender_system`` (the sending facility's system) as well."""
    for ident in identifiers:
        if ident["system"] == NHS_NUMBER_SYSTEM:
            return id_from("Patient", ident)
    usable = [i for i in identifiers if i["system"] != INVALID_NHS_NUMBER_SYSTEM]
    if usable:
        return id_from("Patient", usable[0])
    if not identifiers:
        return None
    first = identifiers[0]
    system = f"{first['system']}|{sender_system}" if sender_system else str(first["system"])
    return resource_id("Patient", system, str(first["value"]))


def _names(pid: Seg) -> list[Json]:
    # PID-9 (alias, kept for backward compatibility since v2.4) is a name the patient is also known by.
    names = [xpn_name(x) for x in pid.composites(5)] + [xpn_name(x) for x in pid.composites(9)]
    return [n for n in names if n]


def _telecoms(pid: Seg) -> list[Json]:
    # PID-13 home and PID-14 business numbers; v2.6+ moved all of them to PID-40.
    found = [xtn_contact(x, "home") for x in pid.composites(13)]
    found += [xtn_contact(x, "work") for x in pid.composites(14)]
    found += [xtn_contact(x) for x in pid.composites(40)]
    return [t for t in found if t]


def _gender(pid: Seg, ctx: Context) -> str | None:
    code = pid.value(8)
    gender = tables.text("v2-0001-administrative-sex", code)
    if code and gender is None:
        ctx.warn(f"PID-8 {code!r} is not in table 0001; gender left out", "PID-8")
    return gender


def _deceased(pid: Seg, ctx: Context) -> dict[str, Any]:
    when = ctx.time(pid, 29)
    if when:
        return {"deceasedDateTime": when.value}
    flag = pid.value(30).upper()
    # PID-30 "Y"/"N"; anything else says nothing.
    return {"deceasedBoolean": flag == "Y"} if flag in ("Y", "N") else {}


def general_practitioners(pd1: Seg | None, ctx: Context) -> list[Json]:
    """PD1-3 (GP practice, XON: ODS code in XON.10 or XON.3) and PD1-4 (GP, XCN)."""
    if pd1 is None:
        return []
    ctx.take(pd1)
    practices = [xon_reference(x, ctx.systems) for x in pd1.composites(3)]
    doctors = [xcn_reference(x, ctx.systems) for x in pd1.composites(4)]
    return [r for r in practices + doctors if r]


def patient(pid: Seg, pd1: Seg | None, ctx: Context) -> Resource:
    """PID (+PD1) -> UK Core Patient; without any identifier, a message-scoped id and a warning."""
    ctx.take(pid)
    identifiers = person_identifiers(pid, PID_FIELDS, ctx, _nhs_status(pid))
    rid = patient_id(identifiers, ctx.systems.local(ctx.header.facility))
    if rid is None:
        # A referral must not be lost for want of a patient number: a message-scoped patient, flagged.
        ctx.warn(
            "PID-3, PID-2 and PID-4 hold no identifier: this Patient is known by this message only "
            "and needs linking by hand",
            "PID-3",
        )
        rid = resource_id("Patient", ctx.systems.local(ctx.header.facility), f"message:{ctx.header.control_id}")
    resource: Resource = {"resourceType": "Patient", "id": rid, "meta": profile("Patient")}
    birth = ctx.time(pid, 7)
    optional: dict[str, Any] = {
        "identifier": identifiers,
        "name": _names(pid),
        "telecom": _telecoms(pid),
        "gender": _gender(pid, ctx),
        "birthDate": birth.date if birth else None,
        "address": [a for a in (xad_address(x) for x in pid.composites(11)) if a],
        "generalPractitioner": general_practitioners(pd1, ctx),
        **_deceased(pid, ctx),
    }
    resource.update({k: v for k, v in optional.items() if v not in (None, [], {})})
    return resource


def merged_identifiers(mrg: Seg, ctx: Context) -> list[Json]:
    """MRG -> the identifiers of the patient merged away (MRG-1, MRG-4, MRG-2)."""
    ctx.take(mrg)
    return person_identifiers(mrg, MRG_FIELDS, ctx)
