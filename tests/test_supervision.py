"""No background work dies silently: a poisonous record beside good ones, against the real store.

Each test plants one record that makes the code raise (a Bundle updating ``Patient/$x``, a mapping
result MongoDB cannot store, a referral or report of a shape the scanner cannot read) among ordinary
referrals from several trusts, and proves that the good ones are still mapped and still get their SLA
events, that the bad one is recorded with an OperationOutcome, and that the loops keep running. Then
the supervisor (restart with backoff) and ``/readyz`` (503 naming a dead or stalled task).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from aiohttp import web

from services.api.app import create_app
from services.intake.fhir_intake import check_update_targets
from services.intake.service import IntakeService
from services.mapper.dispatch import make_mapper
from services.mapper.model import MappingResult
from services.mapper.service import MapperService
from services.mapper.worker import MapperWorker, WorkerConfig
from services.notifier.backport import FILTER_CRITERIA
from services.notifier.http import client_session
from services.notifier.service import NotifierService
from services.notifier.signing import SUBSCRIPTION_HEADER
from services.notifier.subscriptions import SubscriptionService
from services.notifier.topics import topic_url
from services.pathway.faults import Faults
from services.pathway.plan import care_plan_id
from services.pathway.reports import ReportFollower
from services.pathway.scanner import SlaScanner
from services.pathway.sla import SlaRules, scan_sla
from services.runner import serve
from shared.auth import Caller
from shared.fhir import FhirError
from shared.fhir_messages import fhir_message
from shared.mllp import MllpClient
from shared.settings import Settings
from shared.store import Document, Store
from shared.supervision import Backoff, Heartbeat, TaskRegistry, supervise

FHIR = {"Content-Type": "application/fhir+json"}
# Thursday 15 January 2026, 10:00 in London (GMT): within service hours, so no out-of-hours event.
DAY = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)
MRI_PATTERN: str = Settings.model_fields["pathway_mri_pattern"].default


def hl7_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%S") + "+0000"


# Three trusts that all run ICE and a PAS: the same local numbers (500001, X100234) in each.
TRUSTS = {
    "RBL": (
        "9449305552",
        "OKAFOR^CHIDI^^^DR",
        "SMITH^MARGARET",
        "19700312",
        "F",
        "leg weakness since yest, cant stand",
    ),
    "RJR": (
        "9449304122",
        "PATEL^ANJALI^^^DR",
        "JONES^DAVID",
        "19400708",
        "M",
        "numbness + tingling both legs, unsteady",
    ),
    "REM": ("9449306222", "EVANS^SIAN^^^DR", "ROBERTS^ELAINE", "19581120", "F", "back pain, ?sensory level T10"),
}


def ref_i12(trust: str, control_id: str, when: datetime) -> bytes:
    nhs, doctor, name, born, sex, neuro = TRUSTS[trust]
    lines = [
        f"MSH|^~\\&|ICE|{trust}|MSCC-HUB|REN|{hl7_time(when)}||REF^I12^REF_I12|{control_id}|P|2.5",
        f"RF1|P^Pending|S^STAT|MSCC^Metastatic spinal cord compression||R^Referral|500001^ICE|{hl7_time(when)}|||"
        "|Suspected MSCC, known ca prostate",
        f"PRD|RP|{doctor}||^^^{trust}||01234 567890^WPN^PH|||{trust}",
        f"PID|1||{nhs}^^^NHS^NH~X100234^^^PAS^MR||{name}||{born}|{sex}",
        f"PV1|1|I|AMU^BAY 3^BED 2^{trust}|||||||ONC|||||||||V{control_id}^^^{trust}",
        f"OBX|1|ST|NEURO^Neurological status||{neuro}||||||F",
    ]
    return ("\r".join(lines) + "\r").encode()


async def send(intake: IntakeService, *messages: bytes) -> None:
    client = await MllpClient.connect("127.0.0.1", intake.mllp.port, timeout_s=30)
    try:
        for message in messages:
            assert b"MSA|AA|" in await client.send(message)
    finally:
        await client.close()


async def record(store: Store, control_id: str) -> Document:
    doc = await store.messages.find_one({"header.control_id": control_id})
    assert doc is not None, control_id
    return doc


async def referral_of(store: Store, control_id: str) -> str:
    """The referral (ServiceRequest id) a mapped message wrote, from its own processing record."""
    doc = await record(store, control_id)
    assert doc["status"] == "mapped", doc.get("processing")
    [rid] = {w["id"] for w in doc["processing"]["resources"] if w["type"] == "ServiceRequest"}
    assert await store.resources.find_one({"_id": f"CarePlan/{care_plan_id(rid)}"}) is not None
    return str(rid)


def patient_x_bundle() -> dict[str, Any]:
    """A transaction updating ``Patient/$x`` (not a FHIR id) beside an ordinary referral."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "https://ehr.rjr.example.nhs.uk/fhir/Patient/$x",
                "resource": {"resourceType": "Patient", "name": [{"family": "Jones", "given": ["David"]}]},
                "request": {"method": "PUT", "url": "Patient/$x"},
            },
            {
                "fullUrl": "urn:uuid:3f1c0e9a-7d42-4a51-9a43-2b0d6c7e8f10",
                "resource": {
                    "resourceType": "ServiceRequest",
                    "identifier": [{"system": "https://ehr.rjr.example.nhs.uk/referral", "value": "RJR-77"}],
                    "status": "active",
                    "intent": "order",
                    "subject": {"reference": "https://ehr.rjr.example.nhs.uk/fhir/Patient/$x"},
                },
                "request": {"method": "POST", "url": "ServiceRequest"},
            },
        ],
    }


async def plant_bundle(store: Store, bundle: dict[str, Any], received: datetime) -> str:
    """A Bundle record as an intake without the id check stored it (status "ready", entry plan)."""
    body = json.dumps(bundle).encode()
    plan = [  # the entry plan that intake wrote before it refused such URLs: PUT ids taken from the URL
        {
            "fullUrl": entry.get("fullUrl"),
            "method": entry["request"]["method"],
            "url": entry["request"]["url"],
            "type": entry["resource"]["resourceType"],
            "id": entry["request"]["url"].split("/", 1)[1]
            if entry["request"]["method"] == "PUT"
            else str(uuid.uuid4()),
        }
        for entry in bundle["entry"]
    ]
    doc = fhir_message(
        str(uuid.uuid4()),
        received,
        body,
        {"client_id": "rjr-ehr", "ods": "RJR"},
        "10.1.2.3",
        {"interaction": "bundle"},
        status="ready",
        issues=[],
        fhir={"bundle_type": bundle["type"], "entries": plan},
    ).to_doc()
    await store.messages.insert_one(doc)
    return str(doc["_id"])


# --- intake: what cannot be processed is refused at once ------------------------------------------------


async def test_intake_refuses_a_bundle_updating_patient_dollar_x(http: httpx.AsyncClient, store: Store) -> None:
    response = await http.post("/fhir", json=patient_x_bundle(), headers=FHIR)
    assert response.status_code == 400, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert any("Patient/$x" in i["diagnostics"] for i in outcome["issue"])
    assert any("Bundle.entry[0].request.url" in i.get("expression", []) for i in outcome["issue"])
    assert await store.messages.count_documents({"status": "ready"}) == 0  # nothing queued for the mapper
    assert await store.messages.count_documents({"status": "rejected"}) == 1  # the body kept, with why
    # an update URL naming another type than the resource it holds is refused the same way
    wrong_type = patient_x_bundle()
    wrong_type["entry"][0]["request"]["url"] = "ServiceRequest/abc"
    refused = await http.post("/fhir", json=wrong_type, headers=FHIR)
    assert refused.status_code == 400
    assert any("Bundle.entry[0].request.url" in i.get("expression", []) for i in refused.json()["issue"])


def test_update_targets_must_be_fhir_ids_of_the_resource_type() -> None:
    """The check that keeps ``Patient/$x`` out of the mapper's queue, on its own."""
    bundle = patient_x_bundle()
    for url, why in (("Patient/$x", "'$x' is not a FHIR id"), ("ServiceRequest/abc", "holds a Patient")):
        bundle["entry"][0]["request"]["url"] = url
        with pytest.raises(FhirError, match=re.escape(why)) as refused:
            check_update_targets(bundle["entry"])
        assert refused.value.status == 400
        assert refused.value.issues[0]["expression"] == ["Bundle.entry[0].request.url"]
    bundle["entry"][0]["request"]["url"] = "Patient/rjr-x100234.2"
    check_update_targets(bundle["entry"])  # a FHIR id of the right type passes


# --- the mapper -----------------------------------------------------------------------------------------


async def test_patient_dollar_x_among_good_referrals_fails_alone_and_the_worker_keeps_mapping(
    intake: IntakeService,
) -> None:
    store = intake.store
    await send(intake, ref_i12("RBL", "RBL0001", DAY), ref_i12("RJR", "RJR0001", DAY))
    bad = await plant_bundle(store, patient_x_bundle(), datetime.now(UTC))
    await send(intake, ref_i12("REM", "REM0001", DAY))
    service = MapperService(store)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        for _ in range(200):
            if await store.messages.count_documents({"status": {"$in": ["ready", "mapping"]}}) == 0:
                break
            await asyncio.sleep(0.05)
        failed = await store.messages.find_one({"_id": bad})
        assert failed is not None and failed["status"] == "failed", failed
        outcome = failed["processing"]["outcome"]
        assert outcome["resourceType"] == "OperationOutcome"
        assert any("could not be written" in i["diagnostics"] for i in outcome["issue"])
        assert any(i.get("expression") == ["Patient.id"] for i in outcome["issue"])  # what the validator refused
        referrals = {await referral_of(store, c) for c in ("RBL0001", "RJR0001", "REM0001")}
        assert len(referrals) == 3  # three trusts: three referrals, each with its plan
        assert not task.done()  # the worker is still running ...
        await send(intake, ref_i12("RBL", "RBL0002", DAY + timedelta(minutes=5)))
        for _ in range(200):  # ... and maps what arrives after the poison
            if (await record(store, "RBL0002"))["status"] == "mapped":
                break
            await asyncio.sleep(0.05)
        assert (await record(store, "RBL0002"))["status"] == "mapped"
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert service.worker.stats.failed == 1


class UnstorableResult:
    """The real mapper, except that one message's result carries a value MongoDB cannot encode (a
    mapping bug): its commit fails, not retryably."""

    def __init__(self, poison: str) -> None:
        self.poison = poison
        self.real = make_mapper(None)

    def __call__(self, doc: Document) -> MappingResult:
        result = self.real(doc)
        if doc["_id"] == self.poison:
            result.unmapped.append(Decimal("1.5"))  # type: ignore[arg-type]
        return result


async def test_a_commit_that_fails_non_retryably_fails_only_its_message(intake: IntakeService) -> None:
    store = intake.store
    await send(intake, ref_i12("RBL", "RBL0101", DAY), ref_i12("RJR", "RJR0101", DAY), ref_i12("REM", "REM0101", DAY))
    poison = (await record(store, "RJR0101"))["_id"]
    worker = MapperWorker(store, UnstorableResult(poison), WorkerConfig(batch_size=10))
    assert await worker.run_once() == 3  # one batch of three
    bad = await record(store, "RJR0101")
    assert bad["status"] == "failed"
    [problem] = bad["processing"]["outcome"]["issue"]
    assert problem["severity"] == "fatal" and "could not be written" in problem["diagnostics"]
    assert "Decimal" in problem["diagnostics"] or "encode" in problem["diagnostics"]
    for good in ("RBL0101", "REM0101"):
        await referral_of(store, good)
    assert worker.stats.mapped == 2 and worker.stats.failed == 1


async def test_a_message_whose_worker_keeps_dying_is_dead_lettered_not_handed_back(store: Store) -> None:
    """A lease that expires again and again (the worker holding it died each time) ends in "dead"."""
    now = datetime.now(UTC)
    bad = await plant_bundle(store, patient_x_bundle(), now)
    config = WorkerConfig(max_attempts=3)
    await store.messages.update_one(
        {"_id": bad},
        {"$set": {"status": "mapping", "map_attempts": 3, "lease": {"owner": "gone", "until": now - timedelta(1)}}},
    )
    worker = MapperWorker(store, make_mapper(None), config)
    assert await worker.claim() == []
    dead = await store.messages.find_one({"_id": bad})
    assert dead is not None and dead["status"] == "dead" and "lease" not in dead
    assert "claimed 3 times" in dead["processing"]["outcome"]["issue"][0]["diagnostics"]
    assert await worker.claim() == []  # never handed out again


# --- the pathway scanner --------------------------------------------------------------------------------


async def plant_poisonous_referrals(store: Store) -> tuple[str, str]:
    """Two referrals of shapes the scan cannot read, each with an active MSCC plan: one whose contained
    resources are not a list (the neurological reading fails), one whose plan period is a bare string."""
    unreadable, shapeless = "poison-neuro", "poison-plan"
    for rid in (unreadable, shapeless):
        request = {
            "resourceType": "ServiceRequest",
            "id": rid,
            "status": "active",
            "intent": "order",
            "subject": {"reference": "Patient/poison"},
            "authoredOn": "2026-01-15T10:00:00+00:00",
            "contained": "PractitionerRole/okafor" if rid == unreadable else [],
        }
        plan = {
            "resourceType": "CarePlan",
            "id": care_plan_id(rid),
            "status": "active",
            "intent": "plan",
            "subject": {"reference": "Patient/poison"},
            "period": {"start": "2026-01-15T10:00:00+00:00"} if rid == unreadable else "2026-01-15",
            "supportingInfo": [{"reference": f"ServiceRequest/{rid}"}],
        }
        for resource in (request, plan):
            key = f"{resource['resourceType']}/{resource['id']}"
            await store.resources.insert_one(
                {
                    "_id": key,
                    "type": resource["resourceType"],
                    "id": resource["id"],
                    "version": 1,
                    "last_updated": DAY,
                    "resource": resource,
                }
            )
    return unreadable, shapeless


async def test_a_poisonous_referral_does_not_stop_the_sla_events_of_the_others(intake: IntakeService) -> None:
    store = intake.store
    await send(intake, ref_i12("RBL", "RBL0201", DAY), ref_i12("RJR", "RJR0201", DAY), ref_i12("REM", "REM0201", DAY))
    await MapperService(store).run(asyncio.Event(), burst=True)
    good = {await referral_of(store, c) for c in ("RBL0201", "RJR0201", "REM0201")}
    unreadable, shapeless = await plant_poisonous_referrals(store)

    written = await scan_sla(store, DAY + timedelta(hours=25))
    events = {(e["id"], e["sla_event"]) for e in written}
    for rid in good:  # 24-hour window (signs present or unclear): at risk at 18 h, breached at 24 h
        assert {(rid, "at-risk"), (rid, "breached")} <= events
    # the unreadable neurological status is read as unknown: the safe 24-hour window, never none
    assert {(unreadable, "at-risk"), (unreadable, "breached")} <= events
    assert not any(rid == shapeless for rid, _ in events)
    faults = {f["record"]: f for f in await Faults(store).list("sla")}
    assert faults[f"ServiceRequest/{shapeless}"]["attempts"] == 1
    assert faults[f"ServiceRequest/{shapeless}"]["outcome"]["resourceType"] == "OperationOutcome"
    assert "AttributeError" in faults[f"ServiceRequest/{shapeless}"]["error"]
    # the next pass tries it again and counts; the good ones get nothing twice
    assert not any(e["id"] in good for e in await scan_sla(store, DAY + timedelta(hours=26)))
    faults = {f["record"]: f for f in await Faults(store).list("sla")}
    assert faults[f"ServiceRequest/{shapeless}"]["attempts"] == 2
    assert faults[f"ServiceRequest/{shapeless}"]["status"] == "retrying"  # a referral is never set aside
    # once the referral is readable again its fault is cleared
    await store.resources.delete_many({"id": {"$in": [shapeless, care_plan_id(shapeless)]}})
    await scan_sla(store, DAY + timedelta(hours=27))
    assert f"ServiceRequest/{shapeless}" not in {f["record"] for f in await Faults(store).list("sla")}


async def test_a_poisonous_mri_report_is_set_aside_and_the_sla_pass_still_runs(intake: IntakeService) -> None:
    store = intake.store
    await send(intake, ref_i12("RBL", "RBL0301", DAY), ref_i12("REM", "REM0301", DAY))
    await MapperService(store).run(asyncio.Event(), burst=True)
    good = {await referral_of(store, c) for c in ("RBL0301", "REM0301")}
    report = {
        "resourceType": "DiagnosticReport",
        "id": "poison-report",
        "status": "final",
        "code": {"text": "MRI whole spine"},
        "subject": "Patient/poison",  # a bare string where a Reference belongs
        "issued": "2026-01-15T16:00:00+00:00",
    }
    await store.resources.insert_one(
        {"_id": "DiagnosticReport/poison-report", "type": "DiagnosticReport", "id": "poison-report", "version": 1}
        | {"last_updated": DAY, "resource": report}
    )
    clock = [DAY + timedelta(hours=19)]
    scanner = SlaScanner(store, SlaRules(), MRI_PATTERN, clock=lambda: clock[0], max_attempts=2)
    first = await scanner.run_once()
    assert [o.outcome for o in first.reports] == ["error"]
    assert {e["id"] for e in first.sla_events if e["sla_event"] == "at-risk"} == good
    clock[0] = DAY + timedelta(hours=25)
    second = await scanner.run_once()
    assert [o.outcome for o in second.reports] == ["failed"]  # set aside after two attempts
    assert {e["id"] for e in second.sla_events if e["sla_event"] == "breached"} == good
    stored = await store.resources.find_one({"_id": "DiagnosticReport/poison-report"})
    assert stored is not None and stored["pathway_checked"]["outcome"] == "failed"
    assert (await scanner.run_once()).reports == []  # not picked again
    [fault] = await Faults(store).list("report")
    assert fault["status"] == "set-aside" and fault["attempts"] == 2
    # the follower alone reports the same way
    assert await ReportFollower(store, MRI_PATTERN).run_once(clock[0]) == []


async def test_the_scanner_loop_keeps_running_beside_poison(intake: IntakeService) -> None:
    store = intake.store
    await send(intake, ref_i12("RJR", "RJR0401", DAY))
    await MapperService(store).run(asyncio.Event(), burst=True)
    rid = await referral_of(store, "RJR0401")
    await plant_poisonous_referrals(store)
    registry = TaskRegistry()
    heartbeat = registry.register("pathway", stale_after_s=60)
    scanner = SlaScanner(store, SlaRules(), MRI_PATTERN, clock=lambda: DAY + timedelta(hours=30))
    stop = asyncio.Event()
    task = asyncio.create_task(scanner.run(stop, 0.05, heartbeat))
    try:
        for _ in range(100):
            if heartbeat.cycles >= 3:
                break
            await asyncio.sleep(0.05)
        assert heartbeat.cycles >= 3 and not task.done()
        assert registry.problems() == {}
        assert await store.outbox.find_one({"_id": f"sla:{rid}:breached"}) is not None
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


# --- the supervisor and /readyz -------------------------------------------------------------------------


async def test_a_loop_that_raises_is_restarted_with_backoff() -> None:
    registry = TaskRegistry()
    stop = asyncio.Event()
    starts: list[float] = []

    async def flaky(heartbeat: Heartbeat) -> None:
        loop = asyncio.get_running_loop()
        starts.append(loop.time())
        if len(starts) <= 3:
            raise RuntimeError(f"bad record {len(starts)}")
        while not stop.is_set():
            heartbeat.beat()
            await asyncio.sleep(0.01)

    task = asyncio.create_task(
        supervise("flaky", flaky, stop, registry, stale_after_s=5, backoff=Backoff(base_s=0.05, max_s=1))
    )
    for _ in range(200):
        await asyncio.sleep(0.02)
        if registry.health("flaky").cycles >= 2:
            break
    health = registry.health("flaky")
    assert health.restarts == 3 and health.current_state() == "running"
    assert health.last_error == "RuntimeError: bad record 3"
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 0.045 and gaps[1] >= 0.095 and gaps[2] >= 0.195  # 0.05, 0.1, 0.2: doubling
    assert registry.problems() == {}
    stop.set()
    await asyncio.wait_for(task, 5)
    assert health.current_state() == "stopped"

    # a loop that returns although nobody asked it to stop is restarted as well
    returns: list[int] = []

    async def quits(heartbeat: Heartbeat) -> None:
        returns.append(1)
        heartbeat.beat()

    stop2 = asyncio.Event()
    task2 = asyncio.create_task(
        supervise("quits", quits, stop2, registry, stale_after_s=5, backoff=Backoff(base_s=0.01, max_s=0.01))
    )
    for _ in range(100):
        if len(returns) >= 3:
            break
        await asyncio.sleep(0.01)
    stop2.set()
    await asyncio.wait_for(task2, 5)
    assert len(returns) >= 3 and "returned without being asked" in str(registry.health("quits").last_error)


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_readyz_names_a_dead_task(settings: Settings, store: Store) -> None:
    ticks = Ticks()
    registry = TaskRegistry(clock=ticks)
    stop = asyncio.Event()

    async def steady(heartbeat: Heartbeat) -> None:
        while not stop.is_set():
            heartbeat.beat()
            await asyncio.sleep(0.01)

    mapper = asyncio.create_task(supervise("mapper", steady, stop, registry, stale_after_s=61.5))
    scanner = asyncio.create_task(supervise("pathway", steady, stop, registry, stale_after_s=105))
    service = IntakeService(settings, store)
    await service.start(mllp=False)
    transport = httpx.ASGITransport(app=create_app(service, registry))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as http:
            await asyncio.sleep(0.05)
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            body = ready.json()
            assert body["status"] == "ready" and set(body["tasks"]) == {"mapper", "pathway"}
            assert body["tasks"]["mapper"]["last_cycle_at"].endswith("Z")
            assert body["tasks"]["pathway"]["healthy"] and body["tasks"]["pathway"]["state"] == "running"

            # the scanner stops cycling (hung on something) while the clock moves on: stalled
            scanner.cancel()
            await asyncio.gather(scanner, return_exceptions=True)
            ticks.now += 30
            await asyncio.sleep(0.05)  # the mapper beats at the new time; the scanner cannot
            assert registry.problems().keys() == {"pathway"}  # dead: its task ended without a stop

            answer = await http.get("/readyz")
            assert answer.status_code == 503
            body = answer.json()
            assert body["status"] == "unavailable" and body["unhealthy_tasks"] == ["pathway"]
            assert "pathway: dead" in body["reason"] and body["tasks"]["pathway"]["state"] == "dead"
            assert body["tasks"]["mapper"]["healthy"]
    finally:
        stop.set()
        await asyncio.gather(mapper, return_exceptions=True)
        await service.stop()


async def test_readyz_503_for_a_task_that_has_not_completed_a_cycle_in_time(settings: Settings, store: Store) -> None:
    ticks = Ticks()
    registry = TaskRegistry(clock=ticks)
    heartbeat = registry.register("mapper", stale_after_s=61.5)
    heartbeat.beat()
    service = IntakeService(settings, store)
    await service.start(mllp=False)
    transport = httpx.ASGITransport(app=create_app(service, registry))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as http:
            assert (await http.get("/readyz")).status_code == 200
            ticks.now += 62
            heartbeat.failed(RuntimeError("database error while writing resources"))
            answer = await http.get("/readyz")
            assert answer.status_code == 503
            body = answer.json()
            assert body["unhealthy_tasks"] == ["mapper"]
            assert "no cycle completed for 62 s (expected within 62 s)" in body["reason"]
            assert "database error while writing resources" in body["reason"]
            assert body["tasks"]["mapper"]["seconds_since_cycle"] == 62.0
            heartbeat.beat()
            assert (await http.get("/readyz")).status_code == 200
    finally:
        await service.stop()


async def test_the_notifier_loops_are_supervised_and_report_their_cycles(settings: Settings, store: Store) -> None:
    registry = TaskRegistry()
    stop = asyncio.Event()
    async with client_session(settings) as session:
        service = NotifierService(store, settings, session, idle_poll_s=0.02)
        task = asyncio.create_task(service.run(stop, registry=registry))
        try:
            for _ in range(200):
                await asyncio.sleep(0.02)
                report = registry.report()
                if {"notifier-fanout", "notifier-delivery"} <= set(report) and all(
                    r["cycles"] >= 2 for r in report.values()
                ):
                    break
            report = registry.report()
            assert set(report) == {"notifier-fanout", "notifier-delivery"}
            assert all(r["healthy"] and r["state"] == "running" and r["cycles"] >= 2 for r in report.values())
            expected = settings.task_stall_factor * 0.08 + settings.task_stall_margin_s  # fan-out: 4 x idle poll
            assert report["notifier-fanout"]["stale_after_s"] == expected
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    assert {r["state"] for r in registry.report().values()} == {"stopped"}
    assert registry.problems() == {}


async def test_the_runner_supervises_every_background_task(
    settings: Settings, store: Store, mongodb_uri: str, intake: IntakeService
) -> None:
    """``mscc mapper`` / ``mscc notifier`` wiring: each loop registered, cycling, and a poisonous Bundle
    queued before start does not stop the mapper from mapping the referral behind it."""
    bad = await plant_bundle(store, patient_x_bundle(), datetime.now(UTC))
    await send(intake, ref_i12("REM", "REM0501", DAY))
    registry = TaskRegistry()
    config = settings.model_copy(update={"mongodb_uri": mongodb_uri, "sla_scan_interval_s": 0.1})
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(serve(config, parts=("mapper", "notifier"), registry=registry, settle_heap=False))
    try:
        wanted = {"mapper", "pathway", "notifier-fanout", "notifier-delivery"}
        for _ in range(300):
            await asyncio.sleep(0.05)
            report = registry.report()
            if set(report) == wanted and all(r["cycles"] >= 2 for r in report.values()):
                break
        report = registry.report()
        assert set(report) == wanted and all(r["cycles"] >= 2 and r["healthy"] for r in report.values()), report
        assert report["pathway"]["stale_after_s"] == settings.task_stall_factor * 0.1 + settings.task_stall_margin_s
        assert (await record(store, "REM0501"))["status"] == "mapped"
        failed = await store.messages.find_one({"_id": bad})
        assert failed is not None and failed["status"] == "failed"
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # what stops ``mscc mapper``
        await asyncio.wait_for(task, 20)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    assert {r["state"] for r in registry.report().values()} == {"stopped"}


async def test_a_subscription_the_notifier_cannot_read_is_set_to_error_and_the_others_are_served(
    settings: Settings, store: Store
) -> None:
    """A malformed subscription document beside a good one: the good one's handshake still goes out,
    the bad one is set to "error" with the exception (not claimed again for ever), the loop goes on."""
    seen: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append(request.headers.get(SUBSCRIPTION_HEADER, ""))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    config = settings.model_copy(update={"notifier_allowed_hosts": ["127.0.0.1"], "notifier_allow_http": True})
    try:
        good = await SubscriptionService(store, config).create(
            {
                "resourceType": "Subscription",
                "status": "requested",
                "reason": "Acute Oncology updates for RJR",
                "criteria": topic_url(config.base_url, "referral-status"),
                "_criteria": {
                    "extension": [{"url": FILTER_CRITERIA, "valueString": "ServiceRequest?requester=Organization/RJR"}]
                },
                "channel": {"type": "rest-hook", "endpoint": f"http://127.0.0.1:{port}/hook"},
            },
            Caller("aos-rjr", "RJR"),
        )
        good_id = str(good.resource["id"])
        # written by hand by someone in a hurry: no channel, no criteria
        await store.subscriptions.insert_one(
            {"_id": "rem-broken", "status": "active", "due_at": datetime.now(UTC) - timedelta(minutes=1), "wake": 0}
        )
        registry = TaskRegistry()
        heartbeat = registry.register("notifier-delivery", stale_after_s=60)
        stop = asyncio.Event()
        async with client_session(config) as session:
            service = NotifierService(store, config, session, idle_poll_s=0.02)
            task = asyncio.create_task(service.delivery.run(stop, asyncio.Event(), heartbeat))
            try:
                for _ in range(250):
                    await asyncio.sleep(0.02)
                    broken = await store.subscriptions.find_one({"_id": "rem-broken"})
                    served = await store.subscriptions.find_one({"_id": good_id})
                    done = broken and broken["status"] == "error" and served and served["status"] == "active"
                    if done and heartbeat.cycles >= 2:
                        break
                assert not task.done() and heartbeat.cycles >= 2
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)
        broken = await store.subscriptions.find_one({"_id": "rem-broken"})
        assert broken is not None and broken["status"] == "error" and "lane" not in broken
        assert broken["error"].startswith("the notifier failed on this subscription: KeyError")
        served = await store.subscriptions.find_one({"_id": good_id})
        assert served is not None and served["status"] == "active" and seen  # its handshake went out
    finally:
        await runner.cleanup()
