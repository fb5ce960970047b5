"""The one write path, the one transaction retry policy and the typed records, against the real mongod.

- A FHIR create is stored once, normalised, as version 1 with one "created" event; mapping it adds only
  what the referral implies (never a version 2 of the referral); replaying the message or resending the
  create changes nothing.
- ``shared.retry.run_transaction`` retries a real write conflict (another transaction holding the
  document) and gives up with ``TransientError`` after its attempts; a stale version guard is a
  ``Conflict`` that a fresh read resolves.
- ``ResourceVersion``, ``HistoryEntry``, ``OutboxEvent`` and ``MessageOutcome`` read and write back every
  document the hub stores, unchanged.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pymongo.errors import DuplicateKeyError, OperationFailure

from services.intake.service import IntakeService
from services.mapper.service import MapperService
from services.mapper.worker import WorkerConfig
from services.pathway.commit import applied_record
from services.pathway.sla import scan_sla
from services.pathway.transitions import Origin, apply_transition
from shared.nhs import NHS_NUMBER_SYSTEM, nhs_patient_id
from shared.records import HistoryEntry, MessageOutcome, OutboxEvent, ResourceVersion
from shared.retry import WRITE_CONFLICT, Conflict, TransactionRetry, TransientError, run_transaction
from shared.store import DURABLE, Store
from shared.versions import next_version, read_version, write_versions

FHIR = {"Content-Type": "application/fhir+json"}
NHS_NUMBER = "9449305552"
UK_CORE_SR = "https://fhir.hl7.org.uk/StructureDefinition/UKCore-ServiceRequest"
QUICK = TransactionRetry(attempts=3, low_s=0.001, high_s=0.002)


def referral(value: str = "WP-1") -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "https://example.org/referral", "value": value}],
        "status": "active",
        "intent": "order",
        "subject": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": NHS_NUMBER}},
        "requester": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RBL"}},
        "authoredOn": "2026-11-25T08:00:00+00:00",
    }


async def burst(store: Store) -> None:
    await MapperService(store, WorkerConfig()).run(asyncio.Event(), burst=True)


async def counts(store: Store) -> tuple[int, int, int]:
    return (
        await store.resources.count_documents({}),
        await store.history.count_documents({}),
        await store.outbox.count_documents({}),
    )


async def test_fhir_create_is_one_version_with_one_created_event(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    store = intake.store
    created = await http.post("/fhir/ServiceRequest", json=referral(), headers=FHIR)
    assert created.status_code == 201, created.text
    body = created.json()
    rid = body["id"]
    # Normalised at intake, as answered: the UK Core profile, the subject linked to its Patient.
    assert UK_CORE_SR in body["meta"]["profile"] and body["meta"]["versionId"] == "1"
    assert body["subject"]["reference"] == f"Patient/{nhs_patient_id(NHS_NUMBER)}"
    key = f"ServiceRequest/{rid}"
    [event] = [e async for e in store.outbox.find({"type": "ServiceRequest", "id": rid})]
    assert event["_id"] == f"{key}/_history/1" and event["kind"] == "created" and event["status"] == "ready"
    [record] = [d async for d in store.messages.find({"protocol": "fhir"})]
    assert event["message_id"] == record["_id"] and record["status"] == "ready"

    await burst(store)
    stored = await store.resources.find_one({"_id": key})
    assert stored is not None and stored["version"] == 1 and stored["resource"] == body
    assert await store.history.count_documents({"type": "ServiceRequest"}) == 1
    referral_events = [e async for e in store.outbox.find({"type": "ServiceRequest"})]
    assert [e["kind"] for e in referral_events] == ["created"]  # never "updated" for a referral just created
    implied = {(e["type"], e["kind"]) async for e in store.outbox.find({"type": {"$ne": "ServiceRequest"}})}
    assert implied == {("Encounter", "created"), ("CarePlan", "created"), ("Task", "created"), ("Patient", "created")}
    mapped = await store.messages.find_one({"_id": record["_id"]})
    assert mapped is not None and mapped["status"] == "mapped"
    assert {w["type"] for w in mapped["processing"]["resources"]} == {"Encounter", "CarePlan", "Task", "Patient"}


async def test_a_replayed_create_or_message_changes_nothing(http: httpx.AsyncClient, intake: IntakeService) -> None:
    store = intake.store
    first = await http.post("/fhir/ServiceRequest", json=referral("WP-2"), headers=FHIR)
    assert first.status_code == 201
    await burst(store)
    before = await counts(store)
    again = await http.post("/fhir/ServiceRequest", json=referral("WP-2"), headers=FHIR)
    assert again.status_code == 200 and again.json() == first.json()
    await store.messages.update_many({}, {"$set": {"status": "ready"}})  # the operator reprocesses it
    await burst(store)
    assert await counts(store) == before
    assert await store.messages.count_documents({"status": "mapped"}) == 1  # the resend stored no record


async def _hold(store: Store, key: str) -> Any:
    """A transaction that has written ``key`` and stays open: every other writer of ``key`` conflicts."""
    session = store.client.start_session()
    await session.start_transaction(write_concern=DURABLE)
    await store.resources.update_one({"_id": key}, {"$inc": {"n": 1}}, session=session)
    return session


async def _write_in_transaction(store: Store, key: str) -> None:
    async with store.client.start_session() as session, await session.start_transaction(write_concern=DURABLE):
        await store.resources.update_one({"_id": key}, {"$inc": {"n": 10}}, session=session)


async def test_a_write_conflict_is_retried_then_given_up(store: Store) -> None:
    key = "Probe/conflict"
    await store.resources.insert_one({"_id": key, "n": 0})
    holder = await _hold(store, key)
    attempts = 0

    async def write() -> None:
        nonlocal attempts
        attempts += 1
        await _write_in_transaction(store, key)

    try:
        with pytest.raises(TransientError) as raised:
            await run_transaction(write, QUICK, what="probe")
    finally:
        await holder.abort_transaction()
        await holder.end_session()
    assert attempts == QUICK.attempts
    cause = raised.value.__cause__
    assert isinstance(cause, OperationFailure) and cause.code == WRITE_CONFLICT
    assert cause.has_error_label("TransientTransactionError")
    assert (await store.resources.find_one({"_id": key}) or {})["n"] == 0  # nothing half-written


async def test_a_write_conflict_that_clears_is_retried_to_success(store: Store) -> None:
    key = "Probe/clears"
    await store.resources.insert_one({"_id": key, "n": 0})
    holder = await _hold(store, key)
    seen: list[BaseException] = []

    def release(exc: BaseException) -> None:
        seen.append(exc)

    async def write() -> None:
        if seen:  # the other writer finishes after our first attempt lost to it
            await holder.commit_transaction()
        await _write_in_transaction(store, key)

    try:
        await run_transaction(write, QUICK, what="probe", on_retry=release)
    finally:
        await holder.end_session()
    assert len(seen) == 1 and isinstance(seen[0], OperationFailure) and seen[0].code == WRITE_CONFLICT
    assert (await store.resources.find_one({"_id": key}) or {})["n"] == 11


async def test_what_cannot_succeed_is_not_retried(store: Store) -> None:
    await store.resources.insert_one({"_id": "Probe/dup"})
    attempts = 0

    async def insert() -> None:
        nonlocal attempts
        attempts += 1
        await store.resources.insert_one({"_id": "Probe/dup"})

    with pytest.raises(DuplicateKeyError):
        await run_transaction(insert, QUICK)
    assert attempts == 1


async def test_a_stale_version_guard_is_a_conflict_a_fresh_read_resolves(store: Store) -> None:
    now = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    patient: dict[str, Any] = {"resourceType": "Patient", "id": "wp", "gender": "female"}
    first = next_version(None, patient, now=now, source="urn:mscc:test", message_id=None)
    assert first is not None
    async with store.client.start_session() as session, await session.start_transaction(write_concern=DURABLE):
        await write_versions(store, [first], session=session)
    stale = read_version(await store.resources.find_one({"_id": "Patient/wp"}))
    rival = next_version(stale, {**patient, "gender": "male"}, now=now, source="urn:mscc:test", message_id=None)
    assert rival is not None
    async with store.client.start_session() as session, await session.start_transaction(write_concern=DURABLE):
        await write_versions(store, [rival], session=session)
    attempts = 0

    async def update() -> int:
        nonlocal attempts
        attempts += 1
        current = stale if attempts == 1 else read_version(await store.resources.find_one({"_id": "Patient/wp"}))
        new = next_version(current, {**patient, "birthDate": "1950-01-01"}, now=now, source="urn:x", message_id=None)
        assert new is not None
        async with store.client.start_session() as session, await session.start_transaction(write_concern=DURABLE):
            await write_versions(store, [new], session=session)
        return new.current.version

    seen: list[BaseException] = []
    assert await run_transaction(update, QUICK, on_retry=seen.append) == 3
    assert [type(e) for e in seen] == [Conflict]
    assert await store.history.count_documents({"type": "Patient", "id": "wp"}) == 3
    assert [e["kind"] async for e in store.outbox.find({"id": "wp"}).sort("version", 1)] == [
        "created",
        "updated",
        "updated",
    ]


async def test_typed_records_round_trip_every_stored_document(http: httpx.AsyncClient, intake: IntakeService) -> None:
    store = intake.store
    created = await http.post("/fhir/ServiceRequest", json=referral("WP-3"), headers=FHIR)
    assert created.status_code == 201
    await burst(store)
    rid = created.json()["id"]
    now = datetime.now(UTC)
    request = applied_record(uuid.uuid4().hex, now, b"{}", None, None, {"interaction": "transition"}, [])
    origin = Origin("api:test", record=request)
    moved = await apply_transition(store, rid, "triaged-accepted", None, "accepted", "Coordinator", origin=origin)
    assert moved.changed
    await scan_sla(store, datetime.now(UTC) + timedelta(days=30))  # SLA events, with their own shape
    kinds = {e["kind"] async for e in store.outbox.find({})}
    assert {"created", "transition", "sla"} <= kinds
    async for doc in store.resources.find({}):
        assert ResourceVersion.from_doc(doc).to_doc() == doc
    async for doc in store.history.find({}):
        assert HistoryEntry.from_doc(doc).to_doc() == doc
    async for doc in store.outbox.find({}):
        assert OutboxEvent.from_doc(doc).to_doc() == doc
    outcomes = [d["processing"] async for d in store.messages.find({"processing": {"$exists": True}})]
    assert {o["status"] for o in outcomes} >= {"mapped", "applied"}
    for processing in outcomes:
        assert MessageOutcome.from_doc(processing).to_doc() == processing
