"""FHIR messages to resources: what a created resource implies, and transaction / batch / message Bundles.

Intake already validated each body and gave every entry's resource its id (``fhir.entries`` on the
record: fullUrl, method, url, type, id). Here each supported entry becomes a resource with that id,
``urn:uuid:`` and other fullUrl references between entries are rewritten to ``Type/id``, and the UK
Core profile is added. Entries that are not resources to store (DELETE, GET, conditional requests,
operations, unsupported types) are reported as unmapped, never dropped silently.

A resource created through ``POST /fhir/{type}`` was stored by intake (version 1, normalised the same
way, with its "created" event): ``map_created`` only derives what it implies, never a second version.

FHIR resources then meet HL7v2 ones (``normalise``): an NHS number failing the check is moved to the
local invalid-number system (a warning, never an NHS number), and a subject given by a valid NHS number
is linked to the Patient every route gives that number, created when absent and never overwritten.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from services.pathway.data_quality import requester_organisation
from services.pathway.hna import plan_issues
from shared.nhs import check_nhs_numbers
from shared.normalise import UK_CORE as UK_CORE
from shared.normalise import link_patient, rewrite_references, with_profile
from shared.store import Document
from shared.stored_types import STORED_TYPES

from .model import MappingError, MappingResult, OutcomeIssue, Patch, Resource, issue

# Envelope resources of a message Bundle: consumed by the messaging layer, not stored as resources.
ENVELOPE_TYPES = ("MessageHeader",)

# What a stored resource implies (pathway.derive): given the resource and when the hub received it.
Derive = Callable[[Resource, datetime | None], tuple[list[Resource], list[Patch]]]


def _source_time(data: Resource, received: datetime | None) -> datetime | None:
    stamp = data.get("timestamp")
    if isinstance(stamp, str):
        try:
            return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            pass
    return received


def normalise(resource: Resource, result: MappingResult, where: str | None = None) -> tuple[Resource, list[Patch]]:
    """The resource as the hub stores it from FHIR: NHS numbers checked (an invalid one demoted, with
    a warning on ``result``), the patient linked by NHS number, the UK Core profile added."""
    checked, invalid = check_nhs_numbers(resource, where)
    result.issues += [finding.issue() for finding in invalid]
    linked, patches = link_patient(checked)
    return with_profile(linked), patches


def referral_issues(resource: Resource, where: str | None = None) -> list[OutcomeIssue]:
    """A referral that names no referring organisation by ODS code (the requester itself, or a contained
    PractitionerRole's or Organization's) is flagged, as HL7v2 referrals are: subscriptions are filtered
    on the requester organisation, so until one is supplied no trust is told anything about it."""
    if resource.get("resourceType") != "ServiceRequest" or requester_organisation(resource):
        return []
    return [
        issue(
            "warning",
            "required",
            "the referral names no referring organisation by ODS code (requester, or the organisation of a "
            "contained PractitionerRole or Organization): no trust can be notified about it until one is "
            "supplied",
            f"{where or 'ServiceRequest'}.requester",
        )
    ]


def map_created(record: Document, derive: Derive) -> MappingResult:
    """What a resource created through the FHIR API implies (the assessment Encounter, the pathway
    CarePlan, the data-quality Task, the Patient its NHS number names, an HNA's support plan).

    The resource itself is not among the results: intake stored it, normalised as here
    (``shared.normalise``), as version 1 with its "created" event. It is normalised again from the
    record's body (the same pure functions, so the same content) only to derive from it.
    """
    data: Resource = json.loads(record["raw"])
    rid = record["header"]["id"]
    received = record.get("received_at")
    result = MappingResult(source_time=received)
    resource, patient_patches = normalise({**data, "id": rid}, result)
    implied, patches = derive(resource, received)
    result.issues += plan_issues(resource)  # an HNA without its support plan says why
    result.issues += referral_issues(resource)
    result.resources += implied
    result.patches += [*patient_patches, *patches]
    return result


def entry_targets(entries: list[dict[str, Any]], plan: list[dict[str, Any]]) -> dict[str, str]:
    """References to other entries of the Bundle -> the ``Type/id`` the hub gives those entries.

    An entry is referred to by its fullUrl (``urn:uuid:...`` or absolute), or relatively by the
    ``Type/id`` it carries in the Bundle (its resource's id, or the tail of an absolute fullUrl). The
    hub stores each entry under an id of its own, so every such reference is rewritten: left as sent,
    ``Patient/pat2`` would name whatever the hub holds under that id, another patient or none.
    """
    targets: dict[str, str] = {}
    for entry, item in zip(entries, plan, strict=True):
        rtype, new_id = item.get("type"), item.get("id")
        if rtype not in STORED_TYPES or not new_id:
            continue
        target = f"{rtype}/{new_id}"
        full_url = item.get("fullUrl")
        if full_url:
            targets[full_url] = target
            tail = str(full_url).rstrip("/").split("/")[-2:]
            if len(tail) == 2 and tail[0] == rtype and not str(full_url).startswith("urn:"):
                targets.setdefault(f"{rtype}/{tail[1]}", target)
        old_id = (entry.get("resource") or {}).get("id")
        if isinstance(old_id, str) and old_id:
            targets.setdefault(f"{rtype}/{old_id}", target)
    return targets


def map_bundle(record: Document, derive: Derive) -> MappingResult:
    """A transaction, batch or message Bundle: its supported entries, references resolved."""
    data: Resource = json.loads(record["raw"])
    entries: list[dict[str, Any]] = data.get("entry") or []
    plan: list[dict[str, Any]] = record.get("fhir", {}).get("entries") or []
    if len(plan) != len(entries):
        raise MappingError("the record's entry plan does not match the Bundle (stored by an older intake?)")
    targets = entry_targets(entries, plan)
    result = MappingResult(source_time=_source_time(data, record.get("received_at")))
    bundle_type = data.get("type")
    for index, (entry, item) in enumerate(zip(entries, plan, strict=True)):
        resource = entry.get("resource") or {}
        rtype = resource.get("resourceType") or item.get("type")
        where = f"Bundle.entry[{index}]"
        method = item.get("method")
        if rtype in ENVELOPE_TYPES and bundle_type == "message":
            continue
        if rtype not in STORED_TYPES:
            result.unmapped.append(
                f"{where} {method or ''} {rtype or item.get('url') or ''}: not a type the hub stores".strip()
            )
            continue
        if method not in (None, "POST", "PUT") or not item.get("id"):
            result.unmapped.append(f"{where} {method} {item.get('url')}: only create and update by id are applied")
            continue
        rewritten = rewrite_references({**resource, "id": item["id"]}, targets)
        mapped, patient_patches = normalise(rewritten, result, f"{where}.resource")
        implied, patches = derive(mapped, record.get("received_at"))
        result.issues += plan_issues(mapped)  # an HNA without its support plan says why
        result.issues += referral_issues(mapped, f"{where}.resource")
        result.resources += [mapped, *implied]
        result.patches += [*patient_patches, *patches]
    if not result.resources:
        result.issues.append(issue("warning", "informational", "the Bundle holds no resource the hub stores"))
    return result
