"""The message records FHIR intake builds for the FHIR corpus inputs it accepts, built without a database.

The FHIR corpus inputs that map (tests/corpus/fhir_manifest.json: ServiceRequests created through
``POST /fhir/ServiceRequest``, transaction, batch and message Bundles posted to ``POST /fhir``) are
mapped from the stored record intake builds: the ids it assigns, a Bundle's entry plan, the receive
time. Here that record is built by intake's own pure functions (``services.intake.fhir_accepted``), as
for the development client (every test request's caller) into an empty database, with what would
differ from run to run pinned: the record id, the receive time, and the random ids given to resources
without a business identifier or id of their own (numbered in order: ``00000000-0000-4000-8000-...``).
``golden_update`` maps the record and writes the golden file.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.intake.fhir_accepted import bundle_record, created_record, prepared_create, read_body
from services.intake.fhir_ids import business_id
from shared.auth import DEV_SCOPES, Caller
from shared.fhir import Resource
from shared.settings import DEV_CLIENT_ID, Settings
from shared.store import Document

CORPUS = Path(__file__).resolve().parent / "corpus"
FHIR_MANIFEST: list[dict[str, Any]] = json.loads((CORPUS / "fhir_manifest.json").read_text(encoding="utf-8"))
# The intake endpoints a corpus input is posted to (tests/test_fhir_intake.py sends them the same way).
ENDPOINTS = ("ServiceRequest", "Bundle")
FHIR_JSON = "application/fhir+json"
# The development client (its default organisation): the caller of every request in the tests.
DEV_CALLER = Caller(DEV_CLIENT_ID, str(Settings.model_fields["dev_client_ods"].default), DEV_SCOPES)
# The hub's own organisation (MSCC_RECEIVING_FACILITY by default): the development client is the MSCC team's.
SERVICE = str(Settings.model_fields["receiving_facility"].default)
PEER = "127.0.0.1"
RECEIVED_AT = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
RECORD_ID = uuid.UUID(int=1).hex
BASE = "http://localhost:8080/fhir"  # only in the answer kept on a Bundle's record, never in the mapping


@dataclass(frozen=True)
class Intake:
    """What intake stores for one accepted input: the message record, and for a create version 1."""

    record: Document
    created: Resource | None = None


def fhir_corpus_entries() -> list[dict[str, Any]]:
    """Every FHIR manifest entry intake is expected to accept at a create or Bundle endpoint."""
    return [e for e in FHIR_MANIFEST if e["endpoint"] in ENDPOINTS and e["expect"] == "accept"]


def numbered_ids() -> Callable[[], str]:
    """Stand-in for intake's random ids: UUIDs numbered 1, 2, ... (the same on every run)."""
    counter = itertools.count(1)
    return lambda: str(uuid.UUID(f"00000000-0000-4000-8000-{next(counter):012x}"))


def intake(entry: dict[str, Any]) -> Intake:
    """The record (and created version 1) intake builds for a corpus input posted by the development
    client to an empty database at ``RECEIVED_AT``; ``FhirError`` when intake refuses it."""
    body = (CORPUS / entry["path"]).read_bytes()
    new_id = numbered_ids()
    if entry["endpoint"] == "Bundle":
        data = read_body(body, FHIR_JSON, "Bundle")
        record = bundle_record(data, body, DEV_CALLER, PEER, RECORD_ID, RECEIVED_AT, BASE, new_id, service_ods=SERVICE)
        return Intake(record)
    rtype = entry["endpoint"]
    data, warnings = prepared_create(read_body(body, FHIR_JSON, rtype))
    # An empty database holds no resource stored before ids were scoped: the scoped id, else a new one.
    rid = business_id(rtype, data, DEV_CALLER.ods_code) or new_id()
    record, version = created_record(
        body, DEV_CALLER, PEER, RECORD_ID, RECEIVED_AT, rtype, rid, data, warnings, service_ods=SERVICE
    )
    return Intake(record, version.current.resource)
