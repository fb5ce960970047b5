"""RF1, PRD -> the referral: the UK Core ServiceRequest and its providers (contained PractitionerRoles).

A missing RF1 still gives a referral (a referral is never lost), identified by MSH-10, with a warning.
The referring trust is named by ODS code (PRD-10, PRD-4, else the sending facility MSH-4): it is the key
notifications are routed by. The priority (RF1-2) is read in ``priority.py``; the DG1, AL1 and PR1 of a
referral in ``clinical.py``; its OBX in ``supporting.py``.
"""

from __future__ import annotations

from typing import Any

from shared.nhs import ODS_ORGANIZATION_SYSTEM

from ...model import Resource
from .. import tables
from ..context import Context
from ..datatypes import Json
from ..datatypes.codes import cwe_concept
from ..datatypes.demographics import person_display, xpn_name, xtn_contact
from ..datatypes.identifiers import Systems, ei_identifier, identifier_type, national_system
from ..datatypes.references import hd_reference, organization_reference, xon_reference
from ..reader import Seg
from .common import dedupe, practitioner_role, profile, request_id


def referral_identifiers(rf1: Seg | None, systems: Systems) -> list[Json]:
    """RF1-6 (originating referral id, the referrer's number: PLAC) and RF1-11 (external referral id)."""
    if rf1 is None:
        return []
    found = [ei_identifier(rf1.composite(6), systems, "PLAC"), ei_identifier(rf1.composite(11), systems)]
    return dedupe([i for i in found if i])


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
