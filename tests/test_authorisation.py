"""Authorisation: every trust kept to its own patients and referrals, the MSCC team sees and moves all.

Every request goes through ``trusts.client_as`` as one of three organisations: two referring trusts
(RBL, RXN; RJR where a third is needed) and the MSCC team (REN, the hub's own organisation). Real
store, the app over ASGI, the mapper run in burst.
"""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir_referrals import FHIR, ODS_SYSTEM, PATIENTS, referral
from helpers import app_client
from receivers import loopback_settings
from test_subscriptions import subscription
from trusts import MSCC, client_as

from services.intake.service import IntakeService
from services.mapper.service import MapperService
from services.mapper.worker import WorkerConfig
from services.notifier.channel_headers import MASKED
from services.notifier.model import ChangeEvent, Focus
from services.pathway.plan import assessment_id, care_plan_id
from shared.nhs import NHS_NUMBER_SYSTEM, nhs_patient_id
from shared.settings import Settings
from shared.store import Store
from shared.versions import next_version, read_version

HL7 = {"Content-Type": "application/hl7-v2"}
REFERRAL_SYSTEM = "https://rbl.nhs.uk/Id/ice-referral"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Loopback callbacks allowed, for the subscriptions created here (never called)."""
    return loopback_settings(settings)


async def map_all(intake: IntakeService) -> None:
    await MapperService(intake.store, WorkerConfig()).run(asyncio.Event(), burst=True)


async def refer(client: httpx.AsyncClient, number: str, trust: str, patient: str = "HOLLOWAY") -> str:
    created = await client.post("/fhir/ServiceRequest", json=referral(number, trust, patient), headers=FHIR)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def ids_of(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", [])}


def transition(step: str) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [{"name": "step", "valueCode": step}]}


async def test_a_trust_reads_searches_and_pages_only_its_own_referrals(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    async with client_as(http, "RBL") as rbl, client_as(http, "RXN") as rxn, client_as(http, MSCC) as mscc:
        mine = [await refer(rbl, f"R{n}", "RBL") for n in range(3)]
        theirs = await refer(rxn, "R9", "RXN", patient="OKONKWO")
        await map_all(intake)
        for path in (
            f"ServiceRequest/{mine[0]}",
            f"Encounter/{assessment_id(mine[0])}",
            f"CarePlan/{care_plan_id(mine[0])}",
        ):
            assert (await rbl.get(f"/fhir/{path}")).status_code == 200
            assert (await mscc.get(f"/fhir/{path}")).status_code == 200
            for hidden in (f"/fhir/{path}", f"/fhir/{path}/_history", f"/fhir/{path}/_history/1"):
                refused = await rxn.get(hidden)
                assert refused.status_code == 404 and refused.json()["resourceType"] == "OperationOutcome"
                assert "is not known" in refused.text
        first = (await rbl.get("/fhir/ServiceRequest", params={"_count": "2"})).json()
        assert first["total"] == 3 and len(first["entry"]) == 2
        following = next(link["url"] for link in first["link"] if link["relation"] == "next")
        rest = (await rbl.get(following.removeprefix("http://localhost:8080"))).json()
        assert ids_of(first) | ids_of(rest) == set(mine)
        assert ids_of((await rxn.get("/fhir/ServiceRequest")).json()) == {theirs}
        assert (await mscc.get("/fhir/ServiceRequest", params={"_summary": "count"})).json()["total"] == 4
        tasks = (await rxn.get("/fhir/Task", params={"focus": f"ServiceRequest/{mine[0]}"})).json()
        assert tasks["total"] == 0
        assert (await rbl.get("/fhir/Task", params={"focus": f"ServiceRequest/{mine[0]}"})).json()["total"] == 1
        history = (await rxn.get("/fhir/ServiceRequest/_history")).json()
        assert {e["resource"]["id"] for e in history["entry"]} == {theirs} and history["total"] == 1
        everything = (await mscc.get("/fhir/ServiceRequest/_history")).json()
        assert {e["resource"]["id"] for e in everything["entry"]} == {*mine, theirs}


async def test_a_patient_referred_by_two_trusts_is_visible_to_both_and_to_no_other(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    number = PATIENTS["HOLLOWAY"]
    patient = f"/fhir/Patient/{nhs_patient_id(number)}"
    by_number = {"identifier": f"{NHS_NUMBER_SYSTEM}|{number}"}
    async with (
        client_as(http, "RBL") as rbl,
        client_as(http, "RXN") as rxn,
        client_as(http, "RJR") as rjr,
        client_as(http, MSCC) as mscc,
    ):
        await refer(rbl, "R1", "RBL")
        await map_all(intake)
        # Trust B searching by NHS number never learns that trust A's patient exists.
        assert (await rxn.get("/fhir/Patient", params=by_number)).json()["total"] == 0
        assert (await rxn.get(patient)).status_code == 404
        assert (await rbl.get("/fhir/Patient", params=by_number)).json()["total"] == 1
        await refer(rxn, "R1", "RXN")
        await map_all(intake)
        for client in (rbl, rxn, mscc):
            assert (await client.get(patient)).status_code == 200
            assert (await client.get("/fhir/Patient", params=by_number)).json()["total"] == 1
        assert (await rjr.get(patient)).status_code == 404
        assert (await rjr.get("/fhir/Patient", params=by_number)).json()["total"] == 0
        assert (await rjr.get("/fhir/Patient/_history")).json()["total"] == 0


async def test_documents_without_trusts_are_the_mscc_teams_only(http: httpx.AsyncClient, store: Store) -> None:
    patient = {"resourceType": "Patient", "id": "legacy", "gender": "female"}
    now = datetime.now(UTC)
    await store.resources.insert_one(
        {
            "_id": "Patient/legacy",
            "type": "Patient",
            "id": "legacy",
            "version": 1,
            "last_updated": now,
            "resource": patient,
        }
    )
    async with client_as(http, "RBL") as rbl, client_as(http, MSCC) as mscc:
        assert (await rbl.get("/fhir/Patient/legacy")).status_code == 404
        assert (await rbl.get("/fhir/Patient")).json()["total"] == 0
        assert (await mscc.get("/fhir/Patient/legacy")).status_code == 200


def test_the_write_path_widens_who_may_see_a_version_and_never_narrows_it() -> None:
    now = datetime.now(UTC)
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female"}
    first = next_version(None, patient, now=now, source="urn:x", message_id=None, trusts=["rbl"])
    assert first is not None and first.current.to_doc()["trusts"] == ["RBL"] and first.event is not None
    assert first.history.to_doc()["trusts"] == ["RBL"]
    current = read_version(first.current.to_doc())
    assert next_version(current, patient, now=now, source="urn:x", message_id=None, trusts=["RBL"]) is None
    # The same content from another trust: a version that names both, and no event (nothing changed).
    second = next_version(current, patient, now=now, source="urn:x", message_id=None, trusts=["RXN"])
    assert second is not None and second.current.version == 2 and second.event is None
    assert second.current.to_doc()["trusts"] == ["RBL", "RXN"]
    changed = next_version(
        read_version(second.current.to_doc()), {**patient, "gender": "male"}, now=now, source="urn:x", message_id=None
    )
    assert changed is not None and changed.current.to_doc()["trusts"] == ["RBL", "RXN"]


async def test_a_trust_creates_referrals_only_in_its_own_name(
    http: httpx.AsyncClient, intake: IntakeService, store: Store
) -> None:
    async with client_as(http, "RBL") as rbl, client_as(http, "RXN") as rxn, client_as(http, MSCC) as mscc:
        # A contained PractitionerRole of another trust, then a direct Organization identifier.
        as_rbl = referral("X1", "RBL")
        refused = await rxn.post("/fhir/ServiceRequest", json=as_rbl, headers=FHIR)
        assert refused.status_code == 403 and refused.json()["resourceType"] == "OperationOutcome"
        assert "RBL" in refused.text and "own name" in refused.text
        direct = {**referral("X2", "RXN"), "requester": {"identifier": {"system": ODS_SYSTEM, "value": "RBL"}}}
        assert (await rxn.post("/fhir/ServiceRequest", json=direct, headers=FHIR)).status_code == 403
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"resource": as_rbl, "request": {"method": "POST", "url": "ServiceRequest"}}],
        }
        in_bundle = await rxn.post("/fhir", json=bundle, headers=FHIR)
        assert in_bundle.status_code == 403 and "Bundle.entry[0].resource.requester" in in_bundle.text
        kept = [d async for d in store.messages.find({"status": "rejected", "http_status": 403})]
        assert len(kept) == 3 and all(d["caller"]["ods_code"] == "RXN" for d in kept)
        assert (await store.resources.count_documents({})) == 0
        # Its own name is fine; the MSCC team may enter a referral on a trust's behalf (visible to it).
        own = await refer(rxn, "X3", "RXN")
        on_behalf = await refer(mscc, "X4", "RBL")
        assert (await rbl.get(f"/fhir/ServiceRequest/{on_behalf}")).status_code == 200
        assert (await rxn.get(f"/fhir/ServiceRequest/{on_behalf}")).status_code == 404
        assert (await rbl.get(f"/fhir/ServiceRequest/{own}")).status_code == 404


async def test_business_identifiers_are_scoped_by_the_authenticated_trust(http: httpx.AsyncClient) -> None:
    async with client_as(http, "RBL") as rbl, client_as(http, "RXN") as rxn, client_as(http, "RJR") as rjr:
        # Trust B posts trust A's referral number first: A's own referral is still created, not a 409.
        squatter = {**referral("R77", "RXN"), "identifier": [{"system": REFERRAL_SYSTEM, "value": "R77"}]}
        theirs = await rxn.post("/fhir/ServiceRequest", json=squatter, headers=FHIR)
        assert theirs.status_code == 201
        genuine = {**referral("R77", "RBL"), "identifier": [{"system": REFERRAL_SYSTEM, "value": "R77"}]}
        mine = await rbl.post("/fhir/ServiceRequest", json=genuine, headers=FHIR)
        assert mine.status_code == 201 and mine.json()["id"] != theirs.json()["id"]
        # If-None-Exist matches only the caller's own resources.
        condition = {"If-None-Exist": f"identifier={REFERRAL_SYSTEM}|R77"}
        again = await rbl.post("/fhir/ServiceRequest", json=genuine, headers={**FHIR, **condition})
        assert again.status_code == 200 and again.json()["id"] == mine.json()["id"]
        third = {**referral("R77", "RJR"), "identifier": [{"system": REFERRAL_SYSTEM, "value": "R77"}]}
        fresh = await rjr.post("/fhir/ServiceRequest", json=third, headers={**FHIR, **condition})
        assert fresh.status_code == 201 and fresh.json()["id"] not in (mine.json()["id"], theirs.json()["id"])
        assert fresh.json()["requester"] == third["requester"]


async def test_only_the_mscc_team_moves_referrals_and_a_trust_may_cancel_its_own(
    http: httpx.AsyncClient, intake: IntakeService
) -> None:
    async with client_as(http, "RBL") as rbl, client_as(http, "RXN") as rxn, client_as(http, MSCC) as mscc:
        mine = await refer(rbl, "R1", "RBL")
        other = await refer(rbl, "R2", "RBL")
        await map_all(intake)
        path = f"/fhir/ServiceRequest/{mine}"
        # Another trust's referral does not exist for RXN: 404 on $transition and PUT, as for an unknown id.
        hidden = await rxn.post(f"{path}/$transition", json=transition("cancelled"), headers=FHIR)
        assert hidden.status_code == 404 and "is not known" in hidden.text
        stored = (await rbl.get(path)).json()
        put = await rxn.put(path, json=stored, headers={**FHIR, "If-Match": 'W/"1"'})
        assert put.status_code == 404 and "is not known" in put.text
        assert (await rxn.put("/fhir/ServiceRequest/nope", json=stored, headers=FHIR)).status_code == 404
        # The referring trust: no pathway moves, nor updates of the MSCC team's Encounter or CarePlan.
        moved = await rbl.post(f"{path}/$transition", json=transition("triaged-accepted"), headers=FHIR)
        assert moved.status_code == 403 and "cancel" in moved.text
        encounter = (await rbl.get(f"/fhir/Encounter/{assessment_id(mine)}")).json()
        assert (await rbl.put(f"/fhir/Encounter/{encounter['id']}", json=encounter, headers=FHIR)).status_code == 403
        edited = {**stored, "note": [{"text": "patient now an inpatient, ward 7"}]}
        assert (await rbl.put(path, json=edited, headers={**FHIR, "If-Match": 'W/"1"'})).status_code == 200
        # The MSCC team moves it; the referrer cancels its other referral.
        accepted = await mscc.post(f"{path}/$transition", json=transition("triaged-accepted"), headers=FHIR)
        assert accepted.status_code == 200, accepted.text
        cancelled = await rbl.post(
            f"/fhir/ServiceRequest/{other}/$transition", json=transition("cancelled"), headers=FHIR
        )
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "revoked"
        # What the MSCC team's move wrote stays visible to the referring trust, and hidden from others.
        assessment = (await rbl.get(f"/fhir/Encounter/{assessment_id(mine)}")).json()
        assert assessment["status"] == "in-progress" and assessment["meta"]["versionId"] == "2"
        assert (await rxn.get(f"/fhir/Encounter/{assessment_id(mine)}")).status_code == 404


async def test_held_messages_are_reviewed_by_the_mscc_team_only(http: httpx.AsyncClient) -> None:
    async with client_as(http, "RBL") as rbl, client_as(http, MSCC) as mscc:
        refused = await rbl.get("/admin/messages")
        assert refused.status_code == 403 and "RBL" in refused.json()["detail"]
        assert (await rbl.post("/admin/messages/abc/reject", json={"reason": "x"})).status_code == 403
        assert (await mscc.get("/admin/messages")).status_code == 200
        assert (await mscc.post("/admin/messages/abc/reject", json={"reason": "x"})).status_code == 404


def hl7(facility: str, control: str, nhs: str = PATIENTS["BRENNAN"]) -> bytes:
    lines = [
        f"MSH|^~\\&|ICE|{facility}|MSCC-HUB|REN|20261125081500||REF^I12^REF_I12|{control}|P|2.5",
        "RF1|A^Accepted|S^STAT|MSCC^Metastatic spinal cord compression||R^Referral|500001^ICE|20261125081500",
        f"PID|1||{nhs}^^^NHS^NH||HUGHES^BRENDA^M||19520611|F",
    ]
    return ("\r".join(lines) + "\r").encode()


async def test_hl7v2_over_http_is_the_callers_own_or_refused_and_kept(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    senders = tmp_path / "senders.json"
    senders.write_text(json.dumps({"senders": [{"facility": "ROYALBOLTON", "ods_code": "RBL"}]}))
    async with app_client(settings.model_copy(update={"senders_file": senders}), store) as http:
        async with client_as(http, "RBL") as rbl, client_as(http, "RXN") as rxn, client_as(http, MSCC) as mscc:
            refused = await rxn.post("/hl7v2", content=hl7("RBL", "C1"), headers=HL7)
            assert refused.status_code == 200 and "MSA|AR|C1" in refused.text and "RXN" in refused.text
            kept = await store.messages.find_one({"_id": refused.headers["x-message-id"]})
            assert kept is not None and kept["status"] == "rejected" and "MSH-4" in kept["reason"]
            for client, facility, control in ((rbl, "RBL", "C2"), (rbl, "ROYALBOLTON", "C3"), (mscc, "RBL", "C4")):
                accepted = await client.post("/hl7v2", content=hl7(facility, control), headers=HL7)
                assert f"MSA|AA|{control}" in accepted.text, accepted.text
                record = await store.messages.find_one({"_id": accepted.headers["x-message-id"]})
                assert record is not None and record["trusts"] == ["RBL"]
            await MapperService(store, WorkerConfig()).run(asyncio.Event(), burst=True)
            by_number = {"identifier": f"{NHS_NUMBER_SYSTEM}|{PATIENTS['BRENNAN']}"}
            assert (await rbl.get("/fhir/Patient", params=by_number)).json()["total"] == 1
            assert (await rxn.get("/fhir/Patient", params=by_number)).json()["total"] == 0
            assert (await rxn.get("/fhir/ServiceRequest")).json()["total"] == 0


async def test_a_trust_manages_only_its_own_subscriptions_and_headers_are_write_only(
    http: httpx.AsyncClient, settings: Settings, store: Store
) -> None:
    async with client_as(http, "RBL") as rbl, client_as(http, "RXN") as rxn, client_as(http, MSCC) as mscc:
        created = await rbl.post("/fhir/Subscription", json=subscription(settings), headers=FHIR)
        assert created.status_code == 201, created.text
        sub = created.json()
        path = f"/fhir/Subscription/{sub['id']}"
        assert sub["channel"]["header"] == [f"Authorization: {MASKED}"] and "Bearer abc" not in created.text
        for client in (rbl, mscc):
            read = await client.get(path)
            assert read.status_code == 200 and "Bearer abc" not in read.text
            found = await client.get("/fhir/Subscription")
            assert found.json()["total"] == 1 and "Bearer abc" not in found.text
        assert (await rxn.get(path)).status_code == 404
        assert (await rxn.get("/fhir/Subscription")).json()["total"] == 0
        assert (await rxn.put(path, json=sub, headers=FHIR)).status_code == 404
        assert (await rxn.delete(path)).status_code == 404
        # Sent back masked (a client's save()), the stored header is kept; a new value replaces it.
        changed = copy.deepcopy(sub)
        changed["reason"] = "Acute Oncology updates, night team"
        assert (await rbl.put(path, json=changed, headers=FHIR)).status_code == 200
        doc = await store.subscriptions.find_one({"_id": sub["id"]})
        assert doc is not None and doc["channel"]["headers"] == [["Authorization", "Bearer abc"]]
        changed["channel"]["header"] = [f"X-Api-Key: {MASKED}"]
        unknown = await rbl.put(path, json=changed, headers=FHIR)
        assert unknown.status_code == 400 and "x-api-key" in unknown.text


async def test_events_show_full_resources_only_to_who_may_see_them(
    http: httpx.AsyncClient, settings: Settings, store: Store, intake: IntakeService
) -> None:
    async with client_as(http, "RBL") as rbl, client_as(http, "RXN") as rxn, client_as(http, MSCC) as mscc:
        mine = await refer(rbl, "R1", "RBL")
        theirs = await refer(rxn, "R2", "RXN", patient="OKONKWO")
        sub_id = (await rbl.post("/fhir/Subscription", json=subscription(settings), headers=FHIR)).json()["id"]
        now = datetime.now(UTC)
        for number, rid in ((1, mine), (2, theirs)):
            event = ChangeEvent(
                f"ServiceRequest/{rid}/_history/1", "created", Focus("ServiceRequest", rid, 1), now, now
            )
            await store.deliveries.insert_one(
                {
                    "_id": f"{sub_id}:{number}",
                    "subscription_id": sub_id,
                    "event_number": number,
                    "topic": "referral-status",
                    "event": event.to_doc(),
                    "status": "delivered",
                    "created_at": now,
                }
            )
        await store.subscriptions.update_one({"_id": sub_id}, {"$set": {"events_since_start": 2}})
        params = {"content": "full-resource"}
        shown = (await rbl.get(f"/fhir/Subscription/{sub_id}/$events", params=params)).json()
        resources = [e["resource"]["id"] for e in shown["entry"][1:] if "resource" in e]
        assert resources == [mine]
        everything = (await mscc.get(f"/fhir/Subscription/{sub_id}/$events", params=params)).json()
        assert [e["resource"]["id"] for e in everything["entry"][1:] if "resource" in e] == [mine, theirs]
