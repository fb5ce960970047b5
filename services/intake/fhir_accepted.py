"""What FHIR intake stores for a body it accepts, built without I/O: the message record and a create's
version 1.

``FhirIntake`` (``fhir_intake``) does the reading and writing: the conditional create's match, the ids
of resources stored before ids were scoped, the transaction, the group commit. Everything it stores for
an accepted body is built here from the body, the caller, the record's id and the time it was received,
so the record the mapper reads can be rebuilt exactly without a database (the golden files of the
hub's own output for the FHIR corpus are made this way). Refusals raise ``FhirError``; the caller keeps
the body as a rejected record and answers with it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from shared.auth import Caller
from shared.built_validation import validate_built
from shared.fhir import FhirError, Resource, check_content_type, parse_json, validate
from shared.fhir_messages import fhir_message
from shared.hna import check_responses as check_hna_responses
from shared.nhs import check_nhs_numbers
from shared.normalise import normalised
from shared.store import Document
from shared.versions import NewVersion, next_version, source_of
from shared.visibility import TRUSTS

from .bundle_entries import bundle_refusals
from .fhir_bundles import (
    BUNDLE_TYPES,
    bundle_key,
    check_update_targets,
    message_response,
    nhs_number_warnings,
    plan_entry,
    refused,
    transaction_receipt,
    with_entry_warnings,
)
from .fhir_ids import random_id
from .trust import referral_trusts


def read_body(body: bytes, content_type: str | None, expected: str) -> Resource:
    """The posted body as a valid ``expected`` resource; ``FhirError`` (400/415/422) otherwise.

    A Bundle's entries are checked against required bindings one by one (a batch refuses only the
    offending entry: ``bundle_entries``); an HNA, alone or in any Bundle, must answer the hub's
    Questionnaire (422 naming the item)."""
    check_content_type(content_type)
    data = validate(parse_json(body), expected, bindings=expected != "Bundle")
    check_hna_responses(data)
    return data


def prepared_create(data: Resource) -> tuple[Resource, list[dict[str, Any]]]:
    """A resource to create as intake stores it, with the warnings to answer and keep.

    An NHS number failing the check is demoted to the local invalid-number system (a warning, never a
    refusal), and the resource is normalised as the mapper would store it (UK Core profile, the patient
    linked by NHS number), so the mapper never writes a version 2 just to add them. What the hub
    changed is checked here (``validate_built``), where a large body is read (the parse pool), so that
    storing it needs no validation on the event loop (``created_record``)."""
    checked, invalid = check_nhs_numbers(data)
    stored, _ = normalised(checked)
    return validate_built(stored), [finding.issue() for finding in invalid]


def created_record(
    body: bytes,
    caller: Caller,
    peer: str,
    record_id: str,
    now: datetime,
    resource_type: str,
    rid: str,
    data: Resource,
    warnings: list[dict[str, Any]],
    *,
    service_ods: str,
) -> tuple[Document, NewVersion]:
    """The ready message record of a create (``data``, prepared from ``body`` by ``prepared_create``, to
    be stored as ``Type/rid``) and version 1 of the resource with its "created" event, both stamped with
    the time intake received the body, and both naming the trusts that may see what it creates
    (``trust.referral_trusts``; ``service_ods``: the MSCC team's organisation). ``FhirError`` 403 when a
    trust names another organisation as the requester."""
    trusts = referral_trusts(data, caller, service_ods)
    header = {"interaction": "create", "resource_type": resource_type, "id": rid}
    new = next_version(
        None,
        {**data, "id": rid},
        now=now,
        source=source_of(record_id, "urn:mscc:intake"),
        message_id=record_id,
        source_time=now,
        trusts=trusts,
        validated=True,  # by prepared_create; only the id and meta are new
    )
    assert new is not None  # a first version is always a change
    record = fhir_message(
        record_id,
        now,
        body,
        caller.to_doc(),
        peer,
        header,
        status="ready",
        issues=warnings,
        fhir={"resources": [f"{resource_type}/{rid}"]},
    )
    record.extra[TRUSTS] = trusts
    return record.to_doc(), new


def _checked_bundle(data: Resource) -> tuple[str, list[dict[str, Any]], Resource]:
    """The Bundle's type, entries and first entry's resource; ``FhirError`` 400 for a type POST /fhir
    does not take, or a message Bundle not led by its MessageHeader."""
    bundle_type = data.get("type")
    if bundle_type not in BUNDLE_TYPES:
        raise FhirError(
            400,
            "not-supported",
            f"Bundle.type {bundle_type!r}: POST /fhir takes transaction, batch or message Bundles",
            expression=["Bundle.type"],
        )
    entries: list[dict[str, Any]] = data.get("entry") or []
    first: Resource = (entries[0].get("resource") or {}) if entries else {}
    if bundle_type == "message" and first.get("resourceType") != "MessageHeader":
        raise FhirError(
            400,
            "invalid",
            "a message Bundle's first entry must be a MessageHeader",
            expression=["Bundle.entry[0].resource"],
        )
    return str(bundle_type), entries, first


def bundle_record(
    data: Resource,
    body: bytes,
    caller: Caller,
    peer: str,
    record_id: str,
    now: datetime,
    base: str,
    new_id: Callable[[], str] = random_id,
    *,
    service_ods: str,
) -> Document:
    """The ready message record of a valid Bundle (``data``, read from ``body``): its entry plan (the id
    each entry's resource will have), warnings, the answer to send, and the key that makes a resend a
    duplicate. ``FhirError`` refuses the Bundle (a type not taken, a transaction with an entry the hub
    does not carry out, a message with nothing the hub stores, an update that could never be stored).
    ``new_id`` names what has no id of its own (entries without a business identifier or id). The
    record names the trusts that may see what the Bundle writes (``trust.referral_trusts``: 403 when a
    trust names another organisation as a referral's requester)."""
    bundle_type, entries, first = _checked_bundle(data)
    trusts = referral_trusts(data, caller, service_ods)
    refusals, not_stored = bundle_refusals(bundle_type, entries)
    # Batch entries refused above are answered one by one, not by refusing the whole Bundle.
    check_update_targets([{} if index in refusals else entry for index, entry in enumerate(entries)])
    header = {"interaction": "bundle", "bundle_type": bundle_type, "message_header": first.get("id")}
    plan = [
        plan_entry(entry, caller.ods_code, new_id) | refused(refusals.get(index)) for index, entry in enumerate(entries)
    ]
    reply = (
        message_response(data, first, record_id, base, now)
        if bundle_type == "message"
        else transaction_receipt(bundle_type, plan)
    )
    warnings = nhs_number_warnings(entries)
    # A refused entry is answered with its refusal alone (nothing of it is applied); a message entry
    # the hub does not store is named in the response.
    warnings = {i: w for i, w in warnings.items() if i not in refusals}
    for index, issues in not_stored.items():
        warnings[index] = [*warnings.get(index, []), *issues]
    reply = with_entry_warnings(reply, warnings)
    record = fhir_message(
        record_id,
        now,
        body,
        caller.to_doc(),
        peer,
        header,
        status="ready",
        issues=[w for index in sorted(warnings) for w in warnings[index]],
        fhir={"bundle_type": bundle_type, "entries": plan},
        reply={"status": reply.status, "body": reply.body},
        dedup_key=bundle_key(data, first, bundle_type, caller.ods_code) or None,
    )
    record.extra[TRUSTS] = trusts
    return record.to_doc()
