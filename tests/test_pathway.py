"""The MSCC pathway over the real HTTP app and a real mongod: $transition, PUT with If-Match, HL7v2 reports.

Referrals are created through the FHIR API and mapped by the real mapper (which gives them their
assessment Encounter and pathway CarePlan); then they are moved along the pathway and what MongoDB
holds is checked: versions, history, and exactly one outbox event per change.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.intake.service import IntakeService
from services.mapper.service import MapperService
from services.pathway.plan import assessment_id, care_plan_id
from services.pathway.record import STEP_URL, Entry, current_step, fhir_time, history, keep_pathway, with_pathway
from services.pathway.reports import ReportFollower
from services.pathway.steps import STEPS, activity_status, allowed
from services.pathway.transitions import apply_transition
from shared.fhir import validate
from shared.mllp import MllpClient
from shared.settings import Settings
from shared.store import Document, Store

FHIR = {"Content-Type": "application/fhir+json"}
REFERRAL_SYSTEM = "https://example.org/referral"
NHS = "9449305552"
HAPPY = [
    "triaged-accepted",
    "mri-requested",
    "mri-reported",
    "mdt-discussed",
    "plan-agreed-radiotherapy",
    "treatment-started",
    "completed",
]


# --- helpers (test_sla.py uses them too) ----------------------------------------------------------------


def referral_body(value: str, authored: datetime, neuro: str | None = "Bilateral leg weakness") -> dict[str, Any]:
    """A FHIR referral; ``neuro`` is the neurological status text (None: not stated)."""
    body: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": REFERRAL_SYSTEM, "value": value}],
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/pathway-test-patient"},
        "authoredOn": fhir_time(authored),
    }
    if neuro is not None:
        body["contained"] = [
            {
                "resourceType": "Observation",
                "id": "neuro",
                "status": "final",
                "code": {"coding": [{"system": "urn:mscc:local", "code": "neurological-status"}]},
                "valueString": neuro,
            }
        ]
        body["supportingInfo"] = [{"reference": "#neuro"}]
    return body


async def drain(store: Store) -> None:
    await MapperService(store).run(asyncio.Event(), burst=True)


async def create_referrals(http: httpx.AsyncClient, store: Store, *bodies: dict[str, Any]) -> list[str]:
    """Create the referrals through the API and map them; their ids."""
    ids = []
    for body in bodies:
        response = await http.post("/fhir/ServiceRequest", json=body, headers=FHIR)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    await drain(store)
    return ids


def parameters(step: str, at: datetime | None = None, note: str | None = None, who: Any = None) -> dict[str, Any]:
    items: list[dict[str, Any]] = [{"name": "step", "valueCode": step}]
    if at is not None:
        items.append({"name": "time", "valueDateTime": fhir_time(at)})
    if note:
        items.append({"name": "note", "valueString": note})
    if isinstance(who, dict):
        items.append({"name": "who", "valueReference": who})
    elif who:
        items.append({"name": "who", "valueString": who})
    return {"resourceType": "Parameters", "parameter": items}


async def move(
    http: httpx.AsyncClient, rid: str, step: str, at: datetime | None = None, **headers: str
) -> httpx.Response:
    return await http.post(
        f"/fhir/ServiceRequest/{rid}/$transition", json=parameters(step, at, who="Coordinator"), headers=FHIR | headers
    )


async def doc(store: Store, key: str) -> Document:
    found = await store.resources.find_one({"_id": key})
    assert found is not None, key
    return found


async def events(store: Store, **query: Any) -> list[Document]:
    return [d async for d in store.outbox.find(query).sort("created_at", 1)]


async def all_valid(store: Store) -> None:
    async for stored in store.resources.find({}):
        validate(stored["resource"])
    async for stored in store.history.find({}):
        validate(stored["resource"])


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# --- the state machine as data --------------------------------------------------------------------------


def test_every_non_final_step_can_be_cancelled_and_final_steps_go_nowhere() -> None:
    for code, row in STEPS.items():
        if row.final:
            assert allowed(code) == (), code
        else:
            assert "cancelled" in allowed(code), code
    assert {c for c, r in STEPS.items() if r.final} == {
        "triaged-advice-only",
        "triaged-not-mscc",
        "completed",
        "discharged",
        "cancelled",
    }


def test_activity_statuses_follow_the_steps_reached() -> None:
    assert activity_status("mri", ["received", "triaged-accepted", "mri-requested"]) == "scheduled"
    assert activity_status("mri", ["received", "triaged-accepted", "mri-reported"]) == "completed"
    assert activity_status("mdt", ["received", "triaged-accepted", "cancelled"]) == "cancelled"
    assert activity_status("mri", ["received", "triaged-accepted", "mri-reported", "discharged"]) == "completed"


def test_keep_pathway_survives_a_referral_message() -> None:
    at = datetime(2026, 1, 15, 9, tzinfo=UTC)
    entries = [Entry("received", at), Entry("triaged-accepted", at + timedelta(hours=1), previous="received")]
    stored = with_pathway({"resourceType": "ServiceRequest", "status": "active"}, "triaged-accepted", entries)
    resent = {"resourceType": "ServiceRequest", "status": "active", "note": [{"text": "updated"}]}
    kept = keep_pathway(stored, resent)
    assert current_step(kept) == "triaged-accepted" and history(kept) == entries
    assert kept["note"] == [{"text": "updated"}]
    # a cancel keeps its status (revoked); the history is kept for audit
    assert keep_pathway(stored, {**resent, "status": "revoked"})["status"] == "revoked"


# --- $transition ----------------------------------------------------------------------------------------


async def test_happy_path_one_event_and_new_versions_per_step(
    http: httpx.AsyncClient, store: Store, now: datetime
) -> None:
    first_contact = now - timedelta(hours=10)
    [rid] = await create_referrals(http, store, referral_body("HAPPY-1", first_contact))
    before = await doc(store, f"ServiceRequest/{rid}")
    version = before["version"]
    for n, step in enumerate(HAPPY, start=1):
        outbox_before = await store.outbox.count_documents({})
        at = first_contact + timedelta(hours=n)
        response = await move(http, rid, step, at)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/fhir+json")
        version += 1
        assert response.headers["ETag"] == f'W/"{version}"'
        body = response.json()
        assert current_step(body) == step and body["meta"]["versionId"] == str(version)
        assert await store.outbox.count_documents({}) == outbox_before + 1  # exactly one event
        [event] = await events(store, kind="transition", step=step)
        assert event["_id"] == f"ServiceRequest/{rid}/_history/{version}" == event["focus"]
        assert event["previous_step"] == (HAPPY[n - 2] if n > 1 else "received")
        assert event["at"].replace(tzinfo=UTC) == at and event["status"] == "ready"
        assert event["message_id"] is not None
        record = await store.messages.find_one({"_id": event["message_id"]})
        assert record is not None and record["status"] == "applied"  # the Parameters body, kept
    request = (await doc(store, f"ServiceRequest/{rid}"))["resource"]
    assert request["status"] == "completed"
    steps = history(request)
    assert [e.step for e in steps] == ["received", *HAPPY]
    assert steps[0].at == first_contact and steps[-1].at == first_contact + timedelta(hours=len(HAPPY))
    assert steps[1].who == "Coordinator" and steps[1].previous == "received"
    encounter = (await doc(store, f"Encounter/{assessment_id(rid)}"))["resource"]
    assert encounter["status"] == "finished" and "end" in encounter["period"]
    plan = (await doc(store, f"CarePlan/{care_plan_id(rid)}"))["resource"]
    assert plan["status"] == "completed"
    assert {a["detail"]["status"] for a in plan["activity"]} == {"completed"}
    read = await http.get(f"/fhir/ServiceRequest/{rid}/_history")
    assert read.json()["total"] == version
    await all_valid(store)


async def test_illegal_transition_is_refused_naming_the_allowed_steps(
    http: httpx.AsyncClient, store: Store, now: datetime
) -> None:
    [rid] = await create_referrals(http, store, referral_body("ILLEGAL-1", now - timedelta(hours=1)))
    version = (await doc(store, f"ServiceRequest/{rid}"))["version"]
    response = await move(http, rid, "mri-reported")
    assert response.status_code == 409
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    [item] = outcome["issue"]
    for step in allowed("received"):
        assert step in item["diagnostics"]
    assert [c["code"] for c in item["details"]["coding"]] == list(allowed("received"))
    assert (await doc(store, f"ServiceRequest/{rid}"))["version"] == version
    assert await store.outbox.count_documents({"kind": "transition"}) == 0
    rejected = await store.messages.find_one({"status": "rejected", "header.operation": "$transition"})
    assert rejected is not None and rejected["http_status"] == 409

    unknown = await move(http, rid, "teleported")
    assert unknown.status_code == 422 and "triaged-accepted" in unknown.json()["issue"][0]["diagnostics"]
    future = await move(http, rid, "triaged-accepted", now + timedelta(hours=2))
    assert future.status_code == 422
    early = await move(http, rid, "triaged-accepted", now - timedelta(days=2))
    assert early.status_code == 422 and "first contact" in early.json()["issue"][0]["diagnostics"]
    missing = await http.post(
        "/fhir/ServiceRequest/nope/$transition", json=parameters("triaged-accepted"), headers=FHIR
    )
    assert missing.status_code == 404
    no_step = await http.post(
        f"/fhir/ServiceRequest/{rid}/$transition", json={"resourceType": "Parameters"}, headers=FHIR
    )
    assert no_step.status_code == 400


async def test_cancelled_from_every_non_final_step(http: httpx.AsyncClient, store: Store, now: datetime) -> None:
    start = now - timedelta(hours=12)
    walks = [["received"], *[HAPPY[: n + 1] for n in range(len(HAPPY) - 1)]]
    ids = await create_referrals(http, store, *(referral_body(f"CANCEL-{n}", start) for n in range(len(walks))))
    for rid, walk in zip(ids, walks, strict=True):
        for n, step in enumerate(s for s in walk if s != "received"):
            assert (await move(http, rid, step, start + timedelta(hours=n + 1))).status_code == 200
        response = await move(http, rid, "cancelled")
        assert response.status_code == 200, (walk, response.text)
        assert response.json()["status"] == "revoked"
        assert (await doc(store, f"Encounter/{assessment_id(rid)}"))["resource"]["status"] == "cancelled"
        plan = (await doc(store, f"CarePlan/{care_plan_id(rid)}"))["resource"]
        assert plan["status"] == "revoked"
        after = await move(http, rid, "triaged-accepted")
        assert after.status_code == 409 and "final step" in after.json()["issue"][0]["diagnostics"]
    await all_valid(store)


async def test_repeating_a_transition_is_a_no_op(http: httpx.AsyncClient, store: Store, now: datetime) -> None:
    [rid] = await create_referrals(http, store, referral_body("REPEAT-1", now - timedelta(hours=3)))
    at = now - timedelta(hours=2)
    first = await move(http, rid, "triaged-accepted", at)
    assert first.status_code == 200
    count = await store.outbox.count_documents({})
    again = await move(http, rid, "triaged-accepted", at)
    assert again.status_code == 200 and again.headers["ETag"] == first.headers["ETag"]
    untimed = await move(http, rid, "triaged-accepted")  # a retry that did not say when
    assert untimed.status_code == 200 and untimed.headers["ETag"] == first.headers["ETag"]
    assert await store.outbox.count_documents({}) == count
    other_time = await move(http, rid, "triaged-accepted", at + timedelta(minutes=5))
    assert other_time.status_code == 409 and "already" in other_time.json()["issue"][0]["diagnostics"]
    # an old move retried after the referral moved on: still the same move, still a no-op
    assert (await move(http, rid, "mri-requested", at + timedelta(hours=1))).status_code == 200
    late_retry = await move(http, rid, "triaged-accepted", at)
    assert late_retry.status_code == 200 and current_step(late_retry.json()) == "mri-requested"
    assert await store.outbox.count_documents({}) == count + 1


async def test_two_simultaneous_transitions_exactly_one_wins(
    http: httpx.AsyncClient, store: Store, now: datetime
) -> None:
    ids = await create_referrals(http, store, *(referral_body(f"RACE-{n}", now - timedelta(hours=1)) for n in range(4)))
    for rid in ids[:3]:
        responses = await asyncio.gather(
            move(http, rid, "triaged-accepted", now - timedelta(minutes=30)),
            move(http, rid, "triaged-not-mscc", now - timedelta(minutes=29)),
        )
        assert sorted(r.status_code for r in responses) == [200, 409], [r.text for r in responses]
        assert await store.outbox.count_documents({"kind": "transition", "id": rid}) == 1
        request = (await doc(store, f"ServiceRequest/{rid}"))["resource"]
        assert [e.step for e in history(request)] == ["received", current_step(request)]
    # with If-Match both name the version they read: the second writer finds it gone
    rid = ids[3]
    etag = (await http.get(f"/fhir/ServiceRequest/{rid}")).headers["ETag"]
    racing = await asyncio.gather(
        move(http, rid, "triaged-accepted", now - timedelta(minutes=10), **{"If-Match": etag}),
        move(http, rid, "cancelled", now - timedelta(minutes=10), **{"If-Match": etag}),
    )
    assert sorted(r.status_code for r in racing) == [200, 412], [r.text for r in racing]
    assert await store.outbox.count_documents({"kind": "transition", "id": rid}) == 1


async def test_transition_with_if_match(http: httpx.AsyncClient, store: Store, now: datetime) -> None:
    [rid] = await create_referrals(http, store, referral_body("IFMATCH-1", now - timedelta(hours=1)))
    etag = (await http.get(f"/fhir/ServiceRequest/{rid}")).headers["ETag"]
    # Not the version the referral is at (1: a FHIR referral is stored once; the mapper never rewrites it).
    stale = await move(http, rid, "triaged-accepted", **{"If-Match": 'W/"0"'})
    assert stale.status_code == 412 and stale.json()["issue"][0]["code"] == "conflict"
    fresh = await move(http, rid, "triaged-accepted", **{"If-Match": etag})
    assert fresh.status_code == 200


# --- PUT with If-Match ----------------------------------------------------------------------------------


async def test_update_needs_if_match(http: httpx.AsyncClient, store: Store, now: datetime) -> None:
    [rid] = await create_referrals(http, store, referral_body("PUT-1", now - timedelta(hours=1)))
    read = await http.get(f"/fhir/ServiceRequest/{rid}")
    body = read.json()
    body["note"] = [{"text": "Patient moved to ward 4"}]
    path = f"/fhir/ServiceRequest/{rid}"
    # Neither If-Match nor meta.versionId (a body carrying the version read is accepted without If-Match:
    # tests/test_fhir_conventions.py).
    missing = await http.put(path, json={k: v for k, v in body.items() if k != "meta"}, headers=FHIR)
    assert missing.status_code == 428 and missing.json()["resourceType"] == "OperationOutcome"
    stale = await http.put(path, json=body, headers=FHIR | {"If-Match": 'W/"0"'})  # not the current version
    assert stale.status_code == 412
    count = await store.outbox.count_documents({})
    done = await http.put(path, json=body, headers=FHIR | {"If-Match": read.headers["ETag"]})
    assert done.status_code == 200, done.text
    version = int(read.headers["ETag"][3:-1]) + 1
    assert done.headers["ETag"] == f'W/"{version}"' and done.json()["note"] == body["note"]
    [event] = await events(store, _id=f"ServiceRequest/{rid}/_history/{version}")
    assert event["kind"] == "updated"
    assert await store.outbox.count_documents({}) == count + 1
    same = await http.put(path, json=done.json(), headers=FHIR | {"If-Match": done.headers["ETag"]})
    assert same.status_code == 200 and same.headers["ETag"] == done.headers["ETag"]  # no change, no version
    invalid = await http.put(
        path,
        json={**body, "subject": "Patient/not-a-reference-object"},
        headers=FHIR | {"If-Match": done.headers["ETag"]},
    )
    assert invalid.status_code == 400
    wrong_id = await http.put(path, json={**body, "id": "other"}, headers=FHIR | {"If-Match": done.headers["ETag"]})
    assert wrong_id.status_code == 400
    unknown = await http.put("/fhir/ServiceRequest/nope", json=body, headers=FHIR | {"If-Match": 'W/"1"'})
    assert unknown.status_code == 405 and "allow" in unknown.headers
    patient = await http.put("/fhir/Patient/x", json={"resourceType": "Patient"}, headers=FHIR | {"If-Match": 'W/"1"'})
    assert patient.status_code == 405
    await all_valid(store)


async def test_update_changing_the_step_follows_the_transition_rules(
    http: httpx.AsyncClient, store: Store, now: datetime
) -> None:
    [rid] = await create_referrals(http, store, referral_body("PUT-STEP-1", now - timedelta(hours=2)))
    assert (await move(http, rid, "triaged-accepted", now - timedelta(hours=1))).status_code == 200
    path = f"/fhir/ServiceRequest/{rid}"
    read = await http.get(path)
    body = read.json()

    def with_step(step: str) -> dict[str, Any]:
        changed = {**body, "extension": [dict(e) for e in body["extension"]]}
        for ext in changed["extension"]:
            if ext["url"] == STEP_URL:
                ext["valueCode"] = step
        return changed

    illegal = await http.put(path, json=with_step("mdt-discussed"), headers=FHIR | {"If-Match": read.headers["ETag"]})
    assert illegal.status_code == 409 and "mri-requested" in illegal.json()["issue"][0]["diagnostics"]
    wrong_status = {**body, "status": "on-hold"}
    refused = await http.put(path, json=wrong_status, headers=FHIR | {"If-Match": read.headers["ETag"]})
    assert refused.status_code == 422 and "$transition" in refused.json()["issue"][0]["diagnostics"]
    edited = {**body, "extension": [e for e in body["extension"] if e["url"] == STEP_URL]}
    edited["extension"].append(
        {"url": "urn:mscc:fhir:StructureDefinition:pathway-history", "extension": [{"url": "step", "valueCode": "x"}]}
    )
    tampered = await http.put(path, json=edited, headers=FHIR | {"If-Match": read.headers["ETag"]})
    assert tampered.status_code == 422
    without = {k: v for k, v in body.items() if k != "extension"}
    kept = await http.put(
        path, json={**without, "priority": "urgent"}, headers=FHIR | {"If-Match": read.headers["ETag"]}
    )
    assert kept.status_code == 200 and current_step(kept.json()) == "triaged-accepted"  # history kept
    assert len(history(kept.json())) == 2

    legal = await http.put(
        path,
        json={**with_step("mri-requested"), "priority": "urgent"},
        headers=FHIR | {"If-Match": kept.headers["ETag"]},
    )
    assert legal.status_code == 200, legal.text
    assert current_step(legal.json()) == "mri-requested"
    [event] = await events(store, kind="transition", step="mri-requested")
    assert event["previous_step"] == "triaged-accepted" and event["id"] == rid
    plan = (await doc(store, f"CarePlan/{care_plan_id(rid)}"))["resource"]
    assert plan["activity"][0]["detail"]["status"] == "scheduled"


async def test_update_of_encounter_and_care_plan(http: httpx.AsyncClient, store: Store, now: datetime) -> None:
    [rid] = await create_referrals(http, store, referral_body("PUT-ENC-1", now - timedelta(hours=2)))
    assert (await move(http, rid, "triaged-accepted", now - timedelta(hours=1))).status_code == 200
    path = f"/fhir/Encounter/{assessment_id(rid)}"
    read = await http.get(path)
    finished = {**read.json(), "status": "finished"}
    refused = await http.put(path, json=finished, headers=FHIR | {"If-Match": read.headers["ETag"]})
    assert refused.status_code == 422 and "Encounter.status" in refused.json()["issue"][0]["diagnostics"]
    located = {**read.json(), "location": [{"location": {"display": "Ward 4"}}]}
    done = await http.put(path, json=located, headers=FHIR | {"If-Match": read.headers["ETag"]})
    assert done.status_code == 200, done.text
    plan_path = f"/fhir/CarePlan/{care_plan_id(rid)}"
    plan = await http.get(plan_path)
    skipped = plan.json()
    skipped["activity"][0]["detail"]["status"] = "completed"  # MRI done, without the pathway saying so
    refused_plan = await http.put(plan_path, json=skipped, headers=FHIR | {"If-Match": plan.headers["ETag"]})
    assert refused_plan.status_code == 422
    noted = {**plan.json(), "note": [{"text": "Family informed"}]}
    ok = await http.put(plan_path, json=noted, headers=FHIR | {"If-Match": plan.headers["ETag"]})
    assert ok.status_code == 200
    [event] = await events(store, _id=f"CarePlan/{care_plan_id(rid)}/_history/{int(plan.headers['ETag'][3:-1]) + 1}")
    assert event["kind"] == "updated"
    await all_valid(store)


# --- HL7v2: the MRI report ------------------------------------------------------------------------------


def hl7_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%S") + "+0000"


def ref_i12(control_id: str, when: datetime, referral_number: str) -> bytes:
    lines = [
        f"MSH|^~\\&|WIRRAL-PAS|RBL|MSCC-HUB|REN|{hl7_time(when)}||REF^I12^REF_I12|{control_id}|P|2.5",
        f"RF1|A^Accepted|S^STAT|MSCC^Metastatic spinal cord compression||R^Referral|{referral_number}|||"
        "|Suspected MSCC",
        "PRD|RP|ONCOLOGY^ACUTE||^^^RBL",
        f"PID|1||{NHS}^^^NHS^NH~RBL123^^^RBL^MR||DEMO^ALEX||19580214|M",
        "OBX|1|ST|NEURO^Neurological status||Bilateral leg weakness||||||F",
    ]
    return ("\r".join(lines) + "\r").encode()


def oru(control_id: str, when: datetime, status: str = "F", code: str = "MRWSP^MRI whole spine^L") -> bytes:
    lines = [
        f"MSH|^~\\&|RIS|REN|MSCC-HUB|REN|{hl7_time(when)}||ORU^R01^ORU_R01|{control_id}|P|2.5.1",
        f"PID|1||{NHS}^^^NHS^NH||DEMO^ALEX||19580214|M",
        f"ORC|RE|MRI-{control_id}^RIS|ACC-{control_id}^RIS||CM",
        f"OBR|1|MRI-{control_id}^RIS|ACC-{control_id}^RIS|{code}|||{hl7_time(when)}"
        f"|||||||||||||||{hl7_time(when)}||RAD|{status}",
        "OBX|1|TX|REP^Report^L||Cord compression at T10.||||||F",
    ]
    return ("\r".join(lines) + "\r").encode()


async def send(intake: IntakeService, *messages: bytes) -> None:
    client = await MllpClient.connect("127.0.0.1", intake.mllp.port, timeout_s=30)
    try:
        for message in messages:
            assert b"MSA|AA|" in await client.send(message)
    finally:
        await client.close()


async def only_referral(store: Store) -> str:
    plans = [d async for d in store.resources.find({"type": "CarePlan"})]
    assert len(plans) == 1
    rid: str = plans[0]["resource"]["supportingInfo"][0]["reference"].removeprefix("ServiceRequest/")
    return rid


async def test_final_mri_report_moves_the_referral_to_mri_reported(
    http: httpx.AsyncClient, intake: IntakeService, settings: Settings, now: datetime
) -> None:
    store = intake.store
    await send(intake, ref_i12("PW1", now - timedelta(hours=5), "RBL-PW-1"))
    await drain(store)
    rid = await only_referral(store)
    assert (await move(http, rid, "triaged-accepted", now - timedelta(hours=4))).status_code == 200
    assert (await move(http, rid, "mri-requested", now - timedelta(hours=3))).status_code == 200
    follower = ReportFollower(store, settings.pathway_mri_pattern)
    # a preliminary report and a chest X-ray do not count
    await send(
        intake,
        oru("R1", now - timedelta(hours=2), status="P"),
        oru("R2", now - timedelta(hours=2), code="XC^Chest X-ray^L"),
    )
    await drain(store)
    outcomes = {o.outcome for o in await follower.run_once(now)}
    assert outcomes == {"not-final", "not-mri"}
    assert current_step((await doc(store, f"ServiceRequest/{rid}"))["resource"]) == "mri-requested"

    reported = now - timedelta(hours=1)
    await send(intake, oru("R3", reported))
    await drain(store)
    [outcome] = await follower.run_once(now)
    assert (outcome.outcome, outcome.referral) == ("moved", rid)
    request = (await doc(store, f"ServiceRequest/{rid}"))["resource"]
    assert current_step(request) == "mri-reported"
    last = history(request)[-1]
    assert last.at == reported and last.basis == outcome.report and last.source and last.source.startswith("hl7v2:")
    [event] = await events(store, kind="transition", step="mri-reported")
    message = await store.messages.find_one({"header.control_id": "R3"})
    assert message is not None and event["message_id"] == message["_id"]
    assert any("mri" in i["diagnostics"].lower() for i in message["processing"]["issues"])
    plan = (await doc(store, f"CarePlan/{care_plan_id(rid)}"))["resource"]
    assert plan["activity"][0]["detail"]["status"] == "completed"
    assert await follower.run_once(now) == []  # each report version is looked at once
    await all_valid(store)


async def test_mri_report_the_pathway_cannot_take_is_an_issue_not_an_error(
    http: httpx.AsyncClient, intake: IntakeService, settings: Settings, now: datetime
) -> None:
    store = intake.store
    await send(intake, ref_i12("PW2", now - timedelta(hours=5), "RBL-PW-2"))
    await drain(store)
    rid = await only_referral(store)  # still "received": not triaged
    await send(intake, oru("R9", now - timedelta(hours=1)))
    await drain(store)
    [outcome] = await ReportFollower(store, settings.pathway_mri_pattern).run_once(now)
    assert outcome.outcome == "refused" and outcome.referral == rid
    assert current_step((await doc(store, f"ServiceRequest/{rid}"))["resource"]) == "received"
    message = await store.messages.find_one({"header.control_id": "R9"})
    assert message is not None and message["status"] == "mapped"
    [warning] = [i for i in message["processing"]["issues"] if i["severity"] == "warning"]
    assert "triaged-accepted" in warning["diagnostics"]


async def test_pathway_survives_a_referral_update_from_the_mapper(
    http: httpx.AsyncClient, intake: IntakeService, now: datetime
) -> None:
    # REF^I13 after the referral moved on: the next move still knows where the referral is
    store = intake.store
    await send(intake, ref_i12("PW3", now - timedelta(hours=5), "RBL-PW-3"))
    await drain(store)
    rid = await only_referral(store)
    assert (await move(http, rid, "triaged-accepted", now - timedelta(hours=4))).status_code == 200
    await send(
        intake, ref_i12("PW4", now - timedelta(hours=3), "RBL-PW-3").replace(b"REF^I12^REF_I12", b"REF^I13^REF_I13")
    )
    await drain(store)
    response = await move(http, rid, "mri-requested", now - timedelta(hours=2))
    assert response.status_code == 200, response.text
    assert [e.step for e in history(response.json())] == ["received", "triaged-accepted", "mri-requested"]


async def test_apply_transition_directly_with_a_controlled_clock(http: httpx.AsyncClient, store: Store) -> None:
    start = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
    [rid] = await create_referrals(http, store, referral_body("CLOCK-1", start))
    result = await apply_transition(
        store, rid, "triaged-accepted", None, clock=lambda: start + timedelta(minutes=20), who="On-call"
    )
    assert result.changed and result.previous_step == "received"
    assert history(result.request["resource"])[-1].at == start + timedelta(minutes=20)
