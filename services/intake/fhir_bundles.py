"""FHIR transaction, batch and message Bundles at intake: what is checked, the ids planned, the answers.

Intake stores a Bundle for the mapper and answers at once: ``check_update_targets`` refuses an update
the hub could never store; ``plan_entry`` gives each entry's resource the id the mapper will use (so the
receipt and the stored resources agree); ``transaction_receipt`` and ``message_response`` build the
answers, and ``with_entry_warnings`` puts the warnings (NHS numbers failing the check, entries of types
the hub does not store) where clients read them. ``bundle_key`` makes a resend a duplicate. Pure
functions, put together into the Bundle's record by ``fhir_accepted.bundle_record``; the store and the
transaction are ``fhir_intake.FhirIntake.post_bundle``'s.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from shared.fhir import FhirError, Resource, business_identifiers, operation_outcome, validate
from shared.ids import fitting_key
from shared.nhs import check_nhs_numbers

from .bundle_entries import EntryRefusal
from .fhir_ids import business_id, identifier_scope, random_id
from .fhir_reply import FhirReply

BUNDLE_TYPES = ("transaction", "batch", "message")


def nhs_number_warnings(entries: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Per entry index, the warnings for NHS numbers failing the check in that entry's resource (the
    mapper stores them under the local invalid-number system: ``check_nhs_numbers``)."""
    found: dict[int, list[dict[str, Any]]] = {}
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            _, invalid = check_nhs_numbers(resource, f"Bundle.entry[{index}].resource")
            if invalid:
                found[index] = [finding.issue() for finding in invalid]
    return found


def with_entry_warnings(reply: FhirReply, warnings: dict[int, list[dict[str, Any]]]) -> FhirReply:
    """The Bundle answer with its warnings where clients read them: a transaction or batch receipt
    entry's ``response.outcome``; for a message Bundle, an OperationOutcome entry that the response
    MessageHeader names in ``response.details`` (the code stays "ok": the message was taken)."""
    if not warnings:
        return reply
    body = copy.deepcopy(reply.body)
    entries: list[dict[str, Any]] = body.get("entry") or []
    if body.get("type") == "message" and entries:
        outcome_id = str(uuid.uuid4())
        issues = [w for index in sorted(warnings) for w in warnings[index]]
        entries[0]["resource"]["response"]["details"] = {"reference": f"urn:uuid:{outcome_id}"}
        outcome = {**operation_outcome(issues), "id": outcome_id}
        entries.append({"fullUrl": f"urn:uuid:{outcome_id}", "resource": outcome})
    else:
        for index, issues in warnings.items():
            if index < len(entries) and isinstance(entries[index].get("response"), dict):
                entries[index]["response"]["outcome"] = operation_outcome(issues)
    return FhirReply(reply.status, validate(body), reply.headers)


# A FHIR id (R4 ``id`` datatype): what an update URL's last part must be for the resource to be stored.
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def check_update_targets(entries: list[dict[str, Any]]) -> None:
    """Refuse (``FhirError`` 400) an update entry whose ``request.url`` names another resource type, or
    an id that is not a FHIR id (``Patient/$x``): such a resource could never be stored, so the Bundle
    is refused here rather than accepted and then failed by the mapper."""
    for index, entry in enumerate(entries):
        request = entry.get("request") or {}
        url = request.get("url")
        rtype = (entry.get("resource") or {}).get("resourceType")
        if request.get("method") != "PUT" or not isinstance(url, str) or "?" in url or url.count("/") != 1:
            continue
        target_type, target_id = url.split("/", 1)
        where = [f"Bundle.entry[{index}].request.url"]
        if not FHIR_ID.fullmatch(target_id):
            raise FhirError(
                400,
                "invalid",
                f"Bundle.entry[{index}]: PUT {url!r}: {target_id!r} is not a FHIR id "
                "(1-64 letters, digits, '-' or '.')",
                expression=where,
            )
        if rtype and target_type != rtype:
            raise FhirError(
                400,
                "invalid",
                f"Bundle.entry[{index}]: PUT {url!r} holds a {rtype}, not a {target_type}",
                expression=where,
            )


def bundle_key(data: Resource, first: Resource, bundle_type: str, ods_code: str) -> str | None:
    """Resending the same Bundle (same identifier from the same organisation, or same MessageHeader
    id) is a duplicate; another trust's Bundle with the same identifier is not."""
    ids = business_identifiers(data)
    if ids:  # a unique index: a digest when the identifier is too long to be indexed (fitting_key)
        return fitting_key(f"fhir|bundle|{identifier_scope(ids[0][0], ods_code)}|{ids[0][1]}")
    if bundle_type == "message" and first.get("id"):
        return fitting_key(f"fhir|message|{first['id']}")
    return None


def plan_entry(entry: dict[str, Any], ods_code: str, new_id: Callable[[], str] = random_id) -> dict[str, Any]:
    """The id this hub gives an entry's resource, so the mapper and the receipt agree on it (from its
    business identifiers, scoped by the caller's organisation ``ods_code``: ``business_id``; else the
    resource's own id; else ``new_id()``, a random UUID: ``random_id``)."""
    resource = entry.get("resource") or {}
    request = entry.get("request") or {}
    method, url = request.get("method"), request.get("url", "")
    rtype = resource.get("resourceType")
    assigned = None
    if rtype and method == "PUT" and "?" not in url and url.count("/") == 1:
        assigned = url.split("/", 1)[1]
    elif rtype and method in (None, "POST"):
        assigned = business_id(rtype, resource, ods_code) or resource.get("id") or new_id()
    return {"fullUrl": entry.get("fullUrl"), "method": method, "url": url or None, "type": rtype, "id": assigned}


def refused(refusal: EntryRefusal | None) -> dict[str, Any]:
    """What the plan records for an entry that is not carried out: no id (the mapper skips it) and why."""
    return {} if refusal is None else {"id": None, "refused": refusal.to_doc()}


def transaction_receipt(bundle_type: str, plan: list[dict[str, Any]]) -> FhirReply:
    """202 for the Bundle; per entry "202 Accepted" with the id it will have, or, for a batch entry
    that is not carried out, its own error status with an OperationOutcome."""
    entries = []
    for index, item in enumerate(plan):
        if item.get("refused"):
            refusal = EntryRefusal(index, item["refused"]["status"], item["refused"]["issues"])
            entries.append({"response": refusal.response()})
            continue
        response: dict[str, Any] = {"status": "202 Accepted"}
        if item["type"] and item["id"]:
            response["location"] = f"{item['type']}/{item['id']}"
        entries.append({"response": response})
    body = validate({"resourceType": "Bundle", "type": f"{bundle_type}-response", "entry": entries})
    return FhirReply(202, body)


def message_response(data: Resource, request_header: Resource, record_id: str, base: str, now: datetime) -> FhirReply:
    """The response message Bundle (``MessageHeader.response.code`` ok) answering a message Bundle."""
    stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    header: Resource = {
        "resourceType": "MessageHeader",
        "id": str(uuid.uuid4()),
        "source": {"endpoint": base},
        "response": {"identifier": request_header.get("id") or data.get("id") or record_id, "code": "ok"},
    }
    if "eventCoding" in request_header:
        header["eventCoding"] = request_header["eventCoding"]
    else:
        header["eventUri"] = request_header.get("eventUri", "urn:mscc:event:acknowledgement")
    body = validate(
        {
            "resourceType": "Bundle",
            "id": str(uuid.UUID(record_id)),
            "type": "message",
            "timestamp": stamp,
            "entry": [{"fullUrl": f"urn:uuid:{header['id']}", "resource": header}],
        }
    )
    return FhirReply(200, body)
