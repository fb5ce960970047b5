"""HL7 v2 segments -> FHIR resources (or resource parts): one function per segment.

Each function reads its segment(s) through ``Seg`` (so unread fields are reported as unmapped), marks
them consumed on the ``Context``, and returns plain FHIR JSON. Values that cannot be read (an invalid
date, an unknown table code) become warnings on the context and are left out; a patient that cannot
be identified gets a message-scoped id and a warning, so that a referral is never lost.
"""

from __future__ import annotations

from typing import Any

from shared.ids import resource_id
from shared.nhs import (
    NHS_NUMBER_SYSTEM,
    ODS_ORGANIZATION_SYSTEM,
    is_valid_nhs_number,
    normalise_nhs_number,
    redact_nhs_number,
)

from ..model import Resource
from . import tables
from .context import Context
from .datatypes import (
    INVALID_NHS_NUMBER_SYSTEM,
    Json,
    Systems,
    cwe_concept,
    cx_identifier,
    ei_identifier,
    hd_reference,
    identifier_type,
    national_system,
    nhs_number_identifier,
    organization_reference,
    person_display,
    pl_display,
    xad_address,
    xcn_reference,
    xon_reference,
    xpn_name,
    xtn_contact,
)
from .reader import Composite, Seg

UK_CORE = "https://fhir.hl7.org.uk/StructureDefinition/UKCore-"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"


def profile(resource_type: str) -> Json:
    return {"profile": [f"{UK_CORE}{resource_type}"]}


def ref(resource_type: str, rid: str) -> Json:
    return {"reference": f"{resource_type}/{rid}"}


def id_from(resource_type: str, ident: Json) -> str:
    """The deterministic id a business identifier gives (``shared.ids.resource_id``)."""
    return resource_id(resource_type, str(ident["system"]), str(ident["value"]))


def _dedupe(identifiers: list[Json]) -> list[Json]:
    seen: set[tuple[str, str]] = set()
    out = []
    for ident in identifiers:
        key = (str(ident.get("system")), str(ident.get("value")))
        if key not in seen:
            seen.add(key)
            out.append(ident)
    return out


# --- PID, MRG: who the patient is ------------------------------------------------------------------


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
    return _dedupe(sorted(out, key=lambda i: i["system"] != NHS_NUMBER_SYSTEM))


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


# --- PV1, PV2: the visit ---------------------------------------------------------------------------


def _visit_identifiers(pv1: Seg, ctx: Context) -> list[Json]:
    """PV1-19 (visit number, the Encounter's key) then PV1-50 (alternate visit id)."""
    found = []
    for number in (19, 50):
        ident = cx_identifier(pv1.composite(number), ctx.systems)
        if ident and number == 19 and "type" not in ident:
            ident["type"] = identifier_type("VN")
        if ident:
            found.append(ident)
    return _dedupe(found)


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


# --- RF1, PRD, DG1, NTE: the referral --------------------------------------------------------------


def referral_identifiers(rf1: Seg | None, systems: Systems) -> list[Json]:
    """RF1-6 (originating referral id, the referrer's number: PLAC) and RF1-11 (external referral id)."""
    if rf1 is None:
        return []
    found = [ei_identifier(rf1.composite(6), systems, "PLAC"), ei_identifier(rf1.composite(11), systems)]
    return _dedupe([i for i in found if i])


def request_id(identifiers: list[Json], ctx: Context, what: str) -> str:
    """ServiceRequest id from its first business identifier; from MSH-10 (with a warning) when none."""
    if identifiers:
        return id_from("ServiceRequest", identifiers[0])
    ctx.warn(f"{what}: no identifier; the id comes from MSH-10, so later messages cannot update it", what)
    return resource_id("ServiceRequest", ctx.systems.local(ctx.header.facility), f"message:{ctx.header.control_id}")


def _code_lookup(seg: Seg, number: int, table: str, ctx: Context) -> str | None:
    code = seg.value(number)
    target = tables.text(table, code)
    if code and target is None:
        ctx.warn(f"{seg.name}-{number} {code!r} is not in {table}; left out", f"{seg.name}-{number}")
    return target


def referral_status(rf1: Seg | None, event: str, ctx: Context) -> str:
    """I14 (cancel) is always revoked; otherwise RF1-1 (table 0283), defaulting to active."""
    code = rf1.value(1) if rf1 else ""
    if event == "I14":
        return "revoked"
    status = tables.text("v2-0283-referral-status", code)
    if code and status is None:
        ctx.info(f"RF1-1 {code!r} is not in table 0283; status active from the trigger event", "RF1-1")
    return status or "active"


def referral(rf1: Seg | None, ctx: Context, subject: Json, code_text: str) -> Resource:
    """RF1 -> UK Core ServiceRequest (the referral): status (RF1-1), category (RF1-3), reason (RF1-10),
    authoredOn (RF1-7), identifiers RF1-6/RF1-11 (priority RF1-2: priority.py). A missing RF1 still gives a
    request (a referral is never lost), identified by MSH-10, with a warning."""
    identifiers = referral_identifiers(rf1, ctx.systems)
    resource: Resource = {
        "resourceType": "ServiceRequest",
        "id": request_id(identifiers, ctx, "RF1-6"),
        "meta": profile("ServiceRequest"),
        "status": referral_status(rf1, ctx.header.event, ctx),
        "intent": "order",
        "code": {"text": code_text},
        "subject": subject,
    }
    if rf1 is None:
        return resource
    ctx.take(rf1)
    authored = ctx.time(rf1, 7)
    optional: dict[str, Any] = {
        "identifier": identifiers,
        # RF1-2 (priority) is read by priority.referral_priority, through the sender's own codes.
        "category": [c for c in (cwe_concept(rf1.composite(3)),) if c],
        "reasonCode": [c for c in (cwe_concept(x) for x in rf1.composites(10)) if c],
        "authoredOn": authored.value if authored else None,
    }
    resource.update({k: v for k, v in optional.items() if v})
    return resource


def practitioner_role(
    local_id: str, role: Json | None, person: Json | None, organization: Json | None, telecom: list[Json]
) -> Resource | None:
    """A contained PractitionerRole tying a person to their organisation (its ODS code) and contacts."""
    parts: dict[str, Any] = {
        "code": [role] if role else [],
        "practitioner": person,
        "organization": organization,
        "telecom": telecom,
    }
    body = {k: v for k, v in parts.items() if v}
    if not (person or organization):
        return None
    return {"resourceType": "PractitionerRole", "id": local_id, **body}


def _prd_person(prd: Seg, ctx: Context) -> Json | None:
    person: Json = {"type": "Practitioner"}
    name = xpn_name(prd.composite(2)) or {}
    display = person_display(name.get("family", ""), name.get("given", []), " ".join(name.get("prefix", [])))
    if display:
        person["display"] = display
    # PRD-7 provider identifiers (PLN: id ^ type ^ ...; some senders write a CX: id ^^^ authority).
    # A national register (GMC, GMP...) named as the type or the authority gives its own system; any
    # other number is local, scoped by the sending facility.
    ident = prd.composite(7)
    national = national_system(ident.c(2), ident.part(4).c(1))
    if ident.c(1) and national:
        person["identifier"] = {"system": national, "value": ident.c(1)}
    elif ident.c(1):
        person["identifier"] = {"system": ctx.systems.local(ctx.header.facility), "value": ident.c(1)}
        kind = identifier_type(ident.c(2))
        if kind:
            person["identifier"]["type"] = kind
    return person if len(person) > 1 else None


def _prd_organization(prd: Seg, ctx: Context) -> Json | None:
    # v2.7+ PRD-10 names the organisation (XON); before, the facility of PRD-4 (PL.4) carries its code.
    org = prd.composite(10)
    if not org.empty:
        return xon_reference(org, ctx.systems)
    place = prd.composite(4)
    return organization_reference(place.c(9), place.part(4).c(1), ctx.systems)


def sending_organization(ctx: Context) -> Json | None:
    """The sending facility (MSH-4) as an Organization reference, only when it is an ODS code: an
    application or site name identifies no trust to send updates to."""
    found = hd_reference(ctx.msh().composite(4), ctx.systems)
    return found if found and has_ods_code(found) else None


def has_ods_code(organization: Json | None) -> bool:
    """Whether an Organization reference carries an ODS code (the key notifications are routed by)."""
    ident = (organization or {}).get("identifier") or {}
    return bool(ident.get("system") == ODS_ORGANIZATION_SYSTEM and ident.get("value"))


def provider(prd: Seg, ctx: Context, local_id: str, default_organization: Json | None = None) -> Resource | None:
    """PRD -> contained PractitionerRole: person PRD-2/PRD-7, organisation PRD-10 or PRD-4 (ODS
    code), contacts PRD-5, role PRD-1 (table 0286). ``default_organization`` stands in when PRD names
    no organisation by ODS code (the referring provider's trust is then the sending facility)."""
    ctx.take(prd)
    telecom = [t for t in (xtn_contact(x, "work") for x in prd.composites(5)) if t]
    organization = _prd_organization(prd, ctx)
    if default_organization and not has_ods_code(organization):
        organization = default_organization
    return practitioner_role(local_id, cwe_concept(prd.composite(1)), _prd_person(prd, ctx), organization, telecom)


def diagnosis(dg1: Seg, ctx: Context) -> Json | None:
    """DG1 -> a reason (CodeableConcept): DG1-3 code, else DG1-4 description as text."""
    ctx.take(dg1)
    concept = cwe_concept(dg1.composite(3))
    if concept is None and dg1.text(4):
        concept = {"text": dg1.text(4)}
    return concept


def note(nte: Seg, ctx: Context) -> Json | None:
    """NTE -> Annotation: text NTE-3 (repetitions are lines), time NTE-6 (v2.6+)."""
    ctx.take(nte)
    text = nte.text(3)
    if not text:
        return None
    annotation: Json = {"text": text}
    when = ctx.time(nte, 6)
    if when and when.moment:
        annotation["time"] = when.value
    return annotation


# --- ORC, OBR: imaging orders and reports ----------------------------------------------------------


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
