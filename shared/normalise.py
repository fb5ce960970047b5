"""How the hub normalises a FHIR resource it is sent, whichever route it came by (create, Bundle).

- ``with_profile``: the UK Core profile of its type in ``meta.profile`` (other profiles kept);
- ``link_patient``: a ``subject`` / ``patient`` given only by a valid NHS number is linked to the Patient
  every route gives that number (``shared.nhs.nhs_patient_id``), with a patch that creates that Patient
  when it is absent and never overwrites it;
- ``rewrite_references``: every ``reference`` found in a map replaced by what it maps to (Bundle entries
  given the ids the hub assigns; a matched patient's references moved to the stored Patient).

NHS numbers failing the check are demoted before this (``shared.nhs.check_nhs_numbers``). Intake stores
a created resource normalised (its version 1); the mapper normalises Bundle entries the same way, and
re-derives from a created resource what it implies. Pure functions.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any

from .nhs import NHS_NUMBER_SYSTEM, is_valid_nhs_number, nhs_patient_id
from .patches import Patch, Resource

UK_CORE = "https://fhir.hl7.org.uk/StructureDefinition/UKCore-"
# Elements that name the patient a resource is about; a reference by NHS number is linked to the Patient.
_SUBJECT_ELEMENTS = ("subject", "patient")


def with_profile(resource: Resource) -> Resource:
    """The resource with its UK Core profile in ``meta.profile`` (kept once, other profiles kept)."""
    out = copy.deepcopy(resource)
    meta = dict(out.get("meta") or {})
    profile = f"{UK_CORE}{out['resourceType']}"
    profiles = list(meta.get("profile") or [])
    if profile not in profiles:
        profiles.append(profile)
    meta["profile"] = profiles
    for server_field in ("versionId", "lastUpdated", "source"):
        meta.pop(server_field, None)
    out["meta"] = meta
    return out


def _patient_of(number: str) -> Resource:
    return {
        "resourceType": "Patient",
        "id": nhs_patient_id(number),
        "meta": {"profile": [f"{UK_CORE}Patient"]},
        "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": number}],
    }


def _create_only(number: str, current: Resource | None) -> Resource:
    # A patient named only by NHS number says nothing else about them: what is stored stays as it is.
    return current if current is not None else _patient_of(number)


def patient_patch(number: str) -> Patch:
    """The Patient with this (valid) NHS number, created when absent and never overwritten."""
    return Patch(
        "Patient",
        nhs_patient_id(number),
        functools.partial(_create_only, number),
        "patient named by NHS number in a FHIR reference",
        ordered=False,
    )


def link_patient(resource: Resource) -> tuple[Resource, list[Patch]]:
    """``subject`` / ``patient`` given only by a valid NHS number gets ``reference: Patient/{id}`` (the id
    every route gives that NHS number, ``shared.nhs.nhs_patient_id``), plus a patch creating that Patient
    when it is absent. References (to a stored or a same-Bundle Patient) are left as they are; so is
    any other identifier, which cannot say which patient it means across trusts."""
    out, patches = resource, []
    for element in _SUBJECT_ELEMENTS:
        value = resource.get(element)
        if not isinstance(value, dict) or value.get("reference"):
            continue
        ident = value.get("identifier")
        if not isinstance(ident, dict) or ident.get("system") != NHS_NUMBER_SYSTEM:
            continue
        number = str(ident.get("value") or "")
        if not is_valid_nhs_number(number):
            continue  # check_nhs_numbers has demoted it already; this is only a guard
        out = {**out, element: {**value, "reference": f"Patient/{nhs_patient_id(number)}"}}
        patches.append(patient_patch(number))
    return out, patches


def normalised(resource: Resource) -> tuple[Resource, list[Patch]]:
    """``resource`` linked to its patient by NHS number and profiled (NHS numbers already checked), and
    the patches creating the Patients it names."""
    linked, patches = link_patient(resource)
    return with_profile(linked), patches


def rewrite_references(value: Any, targets: Mapping[str, str]) -> Any:
    """``value`` (any JSON) with every ``reference`` that is a key of ``targets`` replaced by its value;
    the input is not changed."""
    if isinstance(value, dict):
        out = {k: rewrite_references(v, targets) for k, v in value.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and ref in targets:
            out["reference"] = targets[ref]
        return out
    if isinstance(value, list):
        return [rewrite_references(v, targets) for v in value]
    return value
