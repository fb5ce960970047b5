"""The ids FHIR intake gives posted resources: from their business identifiers, scoped by the sender.

The same identifier from the same organisation always gives the same id, so a resend finds the resource
it created; two trusts using the same identifier get two resources, unless the identifier's system is
national (NHS number, ODS code, GMC number). A Patient with a valid NHS number gets the id every route
gives that number; a resource without a business identifier gets a random id (``random_id``). Ids
stored before scoping keep resolving (``legacy_id``).
"""

from __future__ import annotations

import uuid

from shared.fhir import Resource, business_identifiers
from shared.ids import resource_id, scoped_system
from shared.nhs import NATIONAL_SYSTEMS, NHS_NUMBER_SYSTEM, is_valid_nhs_number, nhs_patient_id


def identifier_scope(system: str, ods_code: str) -> str:
    """The system a business identifier's resource id is derived under: national systems (NHS number,
    ODS code, GMC number) as they are, any other scoped by the organisation that sent it, so two trusts
    posting the same ``system|value`` get two resources."""
    return system if system in NATIONAL_SYSTEMS else scoped_system(system, ods_code)


def business_id(resource_type: str, data: Resource, ods_code: str) -> str | None:
    """The id a posted resource gets from its business identifiers (None without one): a Patient with a
    valid NHS number the id every route gives that number; else the first identifier, scoped by the
    caller's ODS code unless its system is national."""
    identifiers = business_identifiers(data)
    if resource_type == "Patient":
        for system, value in identifiers:
            if system == NHS_NUMBER_SYSTEM and is_valid_nhs_number(value):
                return nhs_patient_id(value)
    if not identifiers:
        return None
    system, value = identifiers[0]
    return resource_id(resource_type, identifier_scope(system, ods_code), value)


def random_id() -> str:
    """The id a resource without a business identifier (or, in a Bundle, an id of its own) is given."""
    return str(uuid.uuid4())


def legacy_id(resource_type: str, data: Resource) -> str | None:
    """The id the first business identifier gave before ids were scoped by the sending organisation
    (resources stored then keep it; see ``FhirIntake._owned_legacy``)."""
    identifiers = business_identifiers(data)
    return resource_id(resource_type, *identifiers[0]) if identifiers else None
