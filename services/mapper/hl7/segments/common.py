"""What more than one segment module uses: the UK Core profile, references, deterministic ids from
business identifiers, deduplicated identifiers, the ServiceRequest id (referrals and orders) and the
contained PractitionerRole (PRD and ORC-21).

Nothing here reads a segment or fails: ids come from business identifiers (``shared.ids.resource_id``),
or from the message (MSH-10) with a warning when there is none.
"""

from __future__ import annotations

from typing import Any

from shared.ids import resource_id

from ...model import Resource
from ..context import Context
from ..datatypes import Json

UK_CORE = "https://fhir.hl7.org.uk/StructureDefinition/UKCore-"


def profile(resource_type: str) -> Json:
    return {"profile": [f"{UK_CORE}{resource_type}"]}


def ref(resource_type: str, rid: str) -> Json:
    return {"reference": f"{resource_type}/{rid}"}


def id_from(resource_type: str, ident: Json) -> str:
    """The deterministic id a business identifier gives (``shared.ids.resource_id``)."""
    return resource_id(resource_type, str(ident["system"]), str(ident["value"]))


def dedupe(identifiers: list[Json]) -> list[Json]:
    seen: set[tuple[str, str]] = set()
    out = []
    for ident in identifiers:
        key = (str(ident.get("system")), str(ident.get("value")))
        if key not in seen:
            seen.add(key)
            out.append(ident)
    return out


def request_id(identifiers: list[Json], ctx: Context, what: str) -> str:
    """ServiceRequest id from its first business identifier; from MSH-10 (with a warning) when none."""
    if identifiers:
        return id_from("ServiceRequest", identifiers[0])
    ctx.warn(f"{what}: no identifier; the id comes from MSH-10, so later messages cannot update it", what)
    return resource_id("ServiceRequest", ctx.systems.local(ctx.header.facility), f"message:{ctx.header.control_id}")


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
