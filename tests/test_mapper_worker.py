"""The mapper worker and writer against the real store: claims, leases, versions, retries, dead letters."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from services.intake.service import IntakeService
from services.mapper.dispatch import make_mapper
from services.mapper.model import MappingError, MappingResult, TransientError
from services.mapper.service import MapperService
from services.mapper.worker import MapperWorker, WorkerConfig
from services.pathway.hna import definition
from shared.fhir import validate
from shared.store import Document, Store

CORPUS = Path(__file__).parent / "corpus"
FHIR = {"Content-Type": "application/fhir+json"}


class Clock:
    """A controlled clock: tests move time instead of sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def burst(store: Store, **config: Any) -> MapperService:
    service = MapperService(store, WorkerConfig(**config))
    await service.run(asyncio.Event(), burst=True)
    return service


def referral(value: str = "R-1", status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "https://example.org/referral", "value": value}],
        "status": status,
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2026-11-25T08:00:00+00:00",
    }


async def resource(store: Store, key: str) -> Document:
    doc = await store.resources.find_one({"_id": key})
    assert doc is not None, f"{key} not stored"
    return doc


async def test_created_referral_is_normalised_and_gets_its_episode_and_plan(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    created = await http.post("/fhir/ServiceRequest", json=referral(), headers=FHIR)
    assert created.status_code == 201
    sr_id = created.json()["id"]
    # Normalised at intake: the UK Core profile is on version 1, as answered.
    assert "https://fhir.hl7.org.uk/StructureDefinition/UKCore-ServiceRequest" in created.json()["meta"]["profile"]
    await burst(intake.store)
    sr = await resource(intake.store, f"ServiceRequest/{sr_id}")
    assert sr["version"] == 1  # the mapper derives what the referral implies; it never rewrites it
    assert "https://fhir.hl7.org.uk/StructureDefinition/UKCore-ServiceRequest" in sr["resource"]["meta"]["profile"]
    [record] = [d async for d in intake.store.messages.find({"protocol": "fhir"})]
    assert record["status"] == "mapped"
    written = {(w["type"], w["changed"]) for w in record["processing"]["resources"]}
    # ... and the referral's data-quality Task (docs/pathway.md, "Referral data quality").
    assert written == {("Encounter", True), ("CarePlan", True), ("Task", True)}
    plans = [d async for d in intake.store.resources.find({"type": "CarePlan"})]
    mri = plans[0]["resource"]["activity"][0]["detail"]
    assert mri["scheduledPeriod"]["end"].startswith("2026-11-26T08:00")  # 24 h: neurological status unknown
    for doc in [sr, *plans]:
        validate(doc["resource"])


async def test_replaying_a_message_creates_no_new_versions(http: httpx.AsyncClient, intake: IntakeService) -> None:
    await http.post("/fhir/ServiceRequest", json=referral(), headers=FHIR)
    await burst(intake.store)
    before = await intake.store.history.count_documents({})
    await intake.store.messages.update_many({}, {"$set": {"status": "ready"}})
    await burst(intake.store)
    assert await intake.store.history.count_documents({}) == before
    [record] = [d async for d in intake.store.messages.find({"protocol": "fhir"})]
    assert not any(w["changed"] for w in record["processing"]["resources"])


async def test_transaction_bundle_resolves_internal_references(http: httpx.AsyncClient, intake: IntakeService) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:8f2c1a6e-0000-4000-8000-000000000001",
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9449305552"}],
                },
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:8f2c1a6e-0000-4000-8000-000000000002",
                "resource": {
                    **referral("R-2"),
                    "subject": {"reference": "urn:uuid:8f2c1a6e-0000-4000-8000-000000000001"},
                },
                "request": {"method": "POST", "url": "ServiceRequest"},
            },
        ],
    }
    receipt = await http.post("/fhir", json=bundle, headers=FHIR)
    assert receipt.status_code == 202
    patient_location, sr_location = (e["response"]["location"] for e in receipt.json()["entry"][:2])
    await burst(intake.store)
    sr = await resource(intake.store, sr_location)
    assert sr["resource"]["subject"] == {"reference": patient_location}
    await resource(intake.store, patient_location)
    [record] = [d async for d in intake.store.messages.find({"protocol": "fhir"})]
    assert record["status"] == "mapped"


async def test_hna_response_gives_a_support_plan(http: httpx.AsyncClient, intake: IntakeService) -> None:
    spec = definition()
    response = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": spec["url"],
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "authored": "2026-11-25T10:00:00+00:00",
        "item": [
            {
                "linkId": "physical",
                "item": [
                    {"linkId": "physical.pain", "answer": [{"valueInteger": 8}]},
                    {"linkId": "physical.sleep", "answer": [{"valueInteger": 2}]},
                ],
            },
            {"linkId": "distress", "answer": [{"valueInteger": 6}]},
        ],
    }
    message = {
        "resourceType": "Bundle",
        "type": "message",
        "entry": [
            {
                "fullUrl": "urn:uuid:8f2c1a6e-0000-4000-8000-0000000000a1",
                "resource": {
                    "resourceType": "MessageHeader",
                    "id": "hna-1",
                    "eventUri": "urn:mscc:event:hna-completed",
                    "source": {"endpoint": "urn:trust:rbl"},
                },
            },
            {"fullUrl": "urn:uuid:8f2c1a6e-0000-4000-8000-0000000000a2", "resource": response},
        ],
    }
    assert (await http.post("/fhir", json=message, headers=FHIR)).status_code == 200
    await burst(intake.store)
    [plan] = [d async for d in intake.store.resources.find({"type": "CarePlan"})]
    activities = [a["detail"]["description"] for a in plan["resource"]["activity"]]
    assert activities == ["Agree support for: Pain (scored 8/10)", "Agree support for: Distress (scored 6/10)"]
    questionnaire = await resource(intake.store, "Questionnaire/mscc-hna")
    validate(questionnaire["resource"])


def _record(n: int, **extra: Any) -> Document:
    return {
        "_id": f"{n:032x}",
        "received_at": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n),
        "protocol": "test",
        "status": "ready",
        "n": n,
        **extra,
    }


def _patient_mapper(record: Document) -> MappingResult:
    patient = {"resourceType": "Patient", "id": f"p{record['n'] % 10}", "gender": record.get("gender", "unknown")}
    return MappingResult(resources=[patient], source_time=record.get("source_time"))


async def test_two_workers_map_every_message_exactly_once(store: Store) -> None:
    await store.messages.insert_many([_record(n, gender=["male", "female"][n % 2]) for n in range(300)])
    workers = [MapperWorker(store, _patient_mapper, WorkerConfig(batch_size=25)) for _ in range(2)]
    stats = await asyncio.gather(*(w.run(asyncio.Event(), burst=True) for w in workers))
    # Every batch touches the same ten patients, so the two writers conflict; a batch that keeps losing
    # goes back to "ready" for a later attempt (backoff), which a later pass maps.
    later = MapperWorker(store, _patient_mapper, clock=lambda: datetime.now(UTC) + timedelta(hours=1))
    late = await later.run(asyncio.Event(), burst=True)
    assert sum(s.mapped for s in stats) + late.mapped == 300
    assert sum(s.retried for s in stats) == late.mapped
    assert await store.messages.count_documents({"status": "mapped"}) == 300
    # every resource's versions are 1..n with no gap or duplicate
    async for doc in store.resources.find({"type": "Patient"}):
        versions = sorted([h["version"] async for h in store.history.find({"id": doc["id"]})])
        assert versions == list(range(1, doc["version"] + 1))


async def test_expired_lease_is_claimed_again(store: Store) -> None:
    clock = Clock()
    await store.messages.insert_one(_record(1))
    first = MapperWorker(store, _patient_mapper, WorkerConfig(lease_s=30), clock)
    assert len(await first.claim()) == 1  # then "crashes" without finishing
    second = MapperWorker(store, _patient_mapper, WorkerConfig(lease_s=30), clock)
    assert await second.claim() == []
    clock.now += timedelta(seconds=31)
    assert await second.run_once() == 1
    assert (await store.messages.find_one({"n": 1}) or {})["status"] == "mapped"


async def test_mapping_errors_fail_the_message_with_an_outcome(store: Store) -> None:
    def broken(record: Document) -> MappingResult:
        if record["n"] == 1:
            raise MappingError("PID-3 is empty", code="required", expression="PID-3")
        raise KeyError("bug")

    await store.messages.insert_many([_record(1), _record(2)])
    await MapperWorker(store, broken).run(asyncio.Event(), burst=True)
    one, two = [d async for d in store.messages.find({}).sort("n", 1)]
    assert one["status"] == two["status"] == "failed"
    assert one["processing"]["outcome"]["issue"][0]["expression"] == ["PID-3"]
    assert "KeyError" in two["processing"]["outcome"]["issue"][0]["diagnostics"]


async def test_transient_errors_back_off_then_dead_letter(store: Store) -> None:
    clock = Clock()

    def flaky(record: Document) -> MappingResult:
        raise TransientError("lookup timed out")

    await store.messages.insert_one(_record(1))
    worker = MapperWorker(store, flaky, WorkerConfig(max_attempts=3, backoff_base_s=10), clock)
    for attempt in range(1, 4):
        assert await worker.run_once() == 1
        doc = await store.messages.find_one({"n": 1})
        assert doc is not None
        if attempt < 3:
            assert doc["status"] == "ready" and doc["next_attempt_at"] > clock.now
            assert await worker.run_once() == 0  # not before its time
            clock.now = doc["next_attempt_at"] + timedelta(seconds=1)
    assert doc["status"] == "dead"
    assert doc["processing"]["outcome"]["issue"][0]["code"] == "transient"
    assert await worker.run_once() == 0  # dead letters are never retried


async def test_an_older_message_does_not_overwrite_a_newer_one(store: Store) -> None:
    newer = _record(1, gender="female", source_time=datetime(2026, 1, 2, tzinfo=UTC))
    # "unknown" is a change but no conflict (another sex would hold the message for review)
    older = _record(11, gender="unknown", source_time=datetime(2026, 1, 1, tzinfo=UTC))
    await store.messages.insert_many([newer, older])
    await MapperWorker(store, _patient_mapper).run(asyncio.Event(), burst=True)
    patient = await resource(store, "Patient/p1")
    assert patient["resource"]["gender"] == "female" and patient["version"] == 1
    stale = await store.messages.find_one({"n": 11})
    assert stale is not None and stale["processing"]["resources"][0]["stale"] is True


def test_unknown_protocol_is_not_supported() -> None:
    mapper = make_mapper()
    try:
        mapper({"protocol": "x12"})
    except MappingError as exc:
        assert exc.issues[0]["code"] == "not-supported"
    else:
        raise AssertionError("no MappingError")


def test_corpus_bundle_plan_mismatch_is_reported() -> None:
    data = (CORPUS / "fhir-r4b-core-examples/json/Bundle-bundle-transaction.json").read_bytes()
    record = {"protocol": "fhir", "header": {"interaction": "bundle"}, "raw": data, "fhir": {"entries": []}}
    try:
        make_mapper()(record)
    except MappingError as exc:
        assert "plan" in exc.issues[0]["diagnostics"]
    else:
        raise AssertionError("no MappingError")
    assert json.loads(data)["type"] == "transaction"
